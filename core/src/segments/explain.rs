//! Explanations for the people who write segments: which part of a rule made a shopper enter or
//! exit (the smallest condition whose value changed), and the whole evaluation tree of a segment
//! for a shopper at a given moment.
//!
//! Each sub-expression of a rule is compiled on its own when the definitions are loaded and
//! evaluated by the same code as the rule itself ([`plan::value`]), so an explanation never
//! disagrees with the membership it explains. Nothing here runs unless a membership changes or
//! someone asks.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::expr::{BinOp, Expr, ExprKind};
use super::plan::{self, Ctx, Node, Scope, Type, Value};
use crate::wire::{Explanation, Operand};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// A chain of `and` (its operands flattened).
    And,
    /// A chain of `or`.
    Or,
    Not,
    /// A comparison, a call, an attribute, arithmetic: where an explanation stops.
    Other,
}

/// A sub-expression of a rule, compiled on its own, with where it is written.
#[derive(Debug, Clone)]
pub struct Part {
    /// In place up to 24 bytes: an explanation takes a copy.
    text: CompactString,
    line: usize,
    col: usize,
    shape: Shape,
    node: Node,
    ty: Type,
    /// Its operands, literals left out.
    children: Vec<Part>,
}

fn flatten<'e>(e: &'e Expr, op: BinOp, out: &mut Vec<&'e Expr>) {
    match &e.kind {
        ExprKind::Bin(o, l, r) if *o == op => {
            flatten(l, op, out);
            flatten(r, op, out);
        }
        _ => out.push(e),
    }
}

fn literal(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Num(_) | ExprKind::Dur(_) | ExprKind::Str(_) | ExprKind::Bool(_) => true,
        ExprKind::Neg(x) => literal(x),
        _ => false,
    }
}

fn operands(e: &Expr) -> (Shape, Vec<&Expr>) {
    let mut out = Vec::new();
    let shape = match &e.kind {
        ExprKind::Bin(op @ (BinOp::And | BinOp::Or), ..) => {
            flatten(e, *op, &mut out);
            if *op == BinOp::And {
                Shape::And
            } else {
                Shape::Or
            }
        }
        ExprKind::Not(x) => {
            out.push(x);
            Shape::Not
        }
        ExprKind::Neg(x) => {
            out.push(x);
            Shape::Other
        }
        ExprKind::Bin(_, l, r) => {
            out.extend([&**l, &**r]);
            Shape::Other
        }
        ExprKind::In(x, items) => {
            out.push(x);
            out.extend(items);
            Shape::Other
        }
        _ => Shape::Other,
    };
    out.retain(|e| !literal(e));
    (shape, out)
}

/// Builds the explanation tree of a compiled rule. `position` maps an offset in `rule` to its
/// line and column in the definitions file.
pub(super) fn build(
    e: &Expr,
    rule: &str,
    scope: &mut dyn Scope,
    position: &dyn Fn(usize) -> (usize, usize),
) -> Option<Part> {
    let (node, ty) = plan::compile(e, scope).ok()?;
    let (shape, kids) = operands(e);
    let (line, col) = position(e.at);
    let text = rule.get(e.at..e.end).unwrap_or(rule);
    Some(Part {
        text: text.split_whitespace().collect::<Vec<_>>().join(" ").into(),
        line,
        col,
        shape,
        node,
        ty,
        children: kids
            .into_iter()
            .filter_map(|k| build(k, rule, scope, position))
            .collect(),
    })
}

fn truthy(v: &Value) -> bool {
    matches!(v, Value::Bool(true))
}

impl Part {
    /// The smallest sub-expression whose truth changed between `before` and `after`, following
    /// the operands that decided the result: for `a and b` that became true, the first operand
    /// that was false; for one that became false, the first that turned false (`or` likewise).
    /// `None` if the truth of the whole did not change.
    pub fn flip(&self, before: &Ctx, after: &Ctx) -> Option<Explanation> {
        let b = plan::value(&self.node, before);
        let a = plan::value(&self.node, after);
        if truthy(&b) == truthy(&a) {
            return None;
        }
        Some(self.flipped(before, after, b, a))
    }

    /// [`Self::flip`] of a rule whose results before and after are known (`was`, `is`): the
    /// whole is not evaluated again. A rule's value is its truth, except for a bare attribute,
    /// which may be missing (and is shown so).
    pub fn flip_known(
        &self,
        before: &Ctx,
        after: &Ctx,
        was: bool,
        is: bool,
    ) -> Option<Explanation> {
        if matches!(self.node, Node::Attr(_)) {
            return self.flip(before, after);
        }
        let known =
            (was != is).then(|| self.flipped(before, after, Value::Bool(was), Value::Bool(is)));
        debug_assert_eq!(
            known,
            self.flip(before, after),
            "the known results are the rule's"
        );
        known
    }

    fn flipped(&self, before: &Ctx, after: &Ctx, b: Value, a: Value) -> Explanation {
        // The first child that flipped the way this node did (each child evaluated once).
        let decisive = match self.shape {
            Shape::And | Shape::Or | Shape::Not => self.children.iter().find_map(|c| {
                let (cb, ca) = (plan::value(&c.node, before), plan::value(&c.node, after));
                (truthy(&cb) != truthy(&ca)
                    && (self.shape == Shape::Not || truthy(&ca) == truthy(&a)))
                .then_some((c, cb, ca))
            }),
            Shape::Other => None,
        };
        if let Some((c, cb, ca)) = decisive {
            return c.flipped(before, after, cb, ca);
        }
        Explanation {
            expression: self.text.clone(),
            line: self.line as i32,
            column: self.col as i32,
            before: b.render(self.ty),
            after: a.render(self.ty),
            operands: self
                .children
                .iter()
                .map(|c| Operand {
                    expression: c.text.clone(),
                    before: plan::value(&c.node, before).render(c.ty),
                    after: plan::value(&c.node, after).render(c.ty),
                })
                .collect(),
        }
    }

    /// The whole tree evaluated at `cx`; `nexts` holds each segment's next change (see
    /// [`plan::next_change`]).
    pub fn evaluate(&self, cx: &Ctx, nexts: &[Option<i64>]) -> Evaluated {
        Evaluated {
            expression: self.text.to_string(),
            line: self.line,
            column: self.col,
            value: plan::value(&self.node, cx).render(self.ty).into(),
            changes_at: plan::next_change(&self.node, cx, nexts).filter(|&t| t > cx.now),
            children: self
                .children
                .iter()
                .map(|c| c.evaluate(cx, nexts))
                .collect(),
        }
    }
}

/// One node of a rule evaluated for a shopper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluated {
    /// The sub-expression as written.
    pub expression: String,
    /// Where it starts in the definitions file (1-based).
    pub line: usize,
    pub column: usize,
    /// Its value (durations in d/h/m/s; `missing` for an attribute never set).
    pub value: String,
    /// The earliest moment (ms since the epoch) at which the passing of time alone may change
    /// it, if no event comes first; absent if time alone cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Evaluated>,
}

impl Evaluated {
    /// An indented text rendering, one node per line: `value  expression  (line:col)`.
    pub fn to_text(&self, out: &mut String, depth: usize, time: &dyn Fn(i64) -> String) {
        use std::fmt::Write;
        let _ = write!(
            out,
            "{:indent$}{:<8} {}  ({}:{})",
            "",
            self.value,
            self.expression,
            self.line,
            self.column,
            indent = depth * 2
        );
        if let Some(t) = self.changes_at {
            let _ = write!(out, "  changes at {}", time(t));
        }
        out.push('\n');
        for c in &self.children {
            c.to_text(out, depth + 1, time);
        }
    }
}
