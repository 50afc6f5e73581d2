//! Segment definitions: a YAML file of rules, parsed, type-checked and compiled once.
//!
//! ```yaml
//! segments:
//!   - id: high-ltv
//!     name: High lifetime value
//!     rule: orders.ltv >= 1000
//! ```
//!
//! Parse and type errors carry the file's line and column. A segment may use `in_segment("id")`;
//! segments are evaluated in dependency order, so it sees this pass's result; cycles are errors.

mod expr;
mod plan;

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event as YamlEvent, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

pub use expr::{parse as parse_expr, ExprError};
pub use plan::{Ctx, Node, ATTRIBUTES, FUNCTIONS};

use crate::profile::Profile;

/// A problem in a definitions file, with its position (1-based line and column).
#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

/// All the problems found in a file (never just the first).
#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DefinitionErrors {}

/// One compiled segment.
#[derive(Debug, Clone)]
pub struct Segment {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    /// The rule as written.
    pub source: String,
    rule: Node,
}

/// The compiled segments, in evaluation (dependency) order.
#[derive(Debug, Clone, Default)]
pub struct SegmentSet {
    segments: Vec<Segment>,
}

impl SegmentSet {
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Evaluates every segment for `profile` at stream time `now` into `out` (one flag per
    /// segment, in [`Self::segments`] order). Does not allocate once `out` has its capacity.
    pub fn evaluate(&self, profile: &Profile, now: i64, out: &mut Vec<bool>) {
        out.clear();
        for seg in &self.segments {
            let hit = plan::matches(
                &seg.rule,
                &Ctx {
                    profile,
                    now,
                    segments: out,
                },
            );
            out.push(hit);
        }
    }

    /// Parses and compiles a definitions file.
    pub fn parse(src: &str) -> Result<SegmentSet, DefinitionErrors> {
        let doc = load_yaml(src).map_err(|e| DefinitionErrors(vec![e]))?;
        let mut errors = Vec::new();
        let defs = read_definitions(&doc, &mut errors);
        let set = compile_all(src, defs, &mut errors);
        if errors.is_empty() {
            Ok(set)
        } else {
            errors.sort_by_key(|e| (e.line, e.col));
            Err(DefinitionErrors(errors))
        }
    }
}

// ------------------------------------------------------------------ YAML with positions

#[derive(Debug, Clone)]
enum Yaml {
    Scalar(String, TScalarStyle, Marker),
    Seq(Vec<Yaml>, Marker),
    Map(Vec<(Yaml, Yaml)>, Marker),
}

impl Yaml {
    fn mark(&self) -> Marker {
        match self {
            Yaml::Scalar(_, _, m) | Yaml::Seq(_, m) | Yaml::Map(_, m) => *m,
        }
    }
}

fn at(m: Marker, message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        line: m.line(),
        col: m.col() + 1,
        message: message.into(),
    }
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Yaml>,
    keys: Vec<Option<Yaml>>,
    root: Option<Yaml>,
    error: Option<DefinitionError>,
}

impl TreeBuilder {
    fn push_value(&mut self, v: Yaml) {
        match self.stack.last_mut() {
            None => self.root = Some(v),
            Some(Yaml::Seq(items, _)) => items.push(v),
            Some(Yaml::Map(entries, _)) => {
                let slot = self.keys.last_mut().expect("a key slot per open map");
                match slot.take() {
                    None => *slot = Some(v),
                    Some(k) => entries.push((k, v)),
                }
            }
            Some(Yaml::Scalar(..)) => unreachable!("scalars are never open"),
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: YamlEvent, mark: Marker) {
        match ev {
            YamlEvent::Scalar(s, style, _, _) => self.push_value(Yaml::Scalar(s, style, mark)),
            YamlEvent::SequenceStart(..) => self.stack.push(Yaml::Seq(Vec::new(), mark)),
            YamlEvent::MappingStart(..) => {
                self.stack.push(Yaml::Map(Vec::new(), mark));
                self.keys.push(None);
            }
            YamlEvent::SequenceEnd | YamlEvent::MappingEnd => {
                let done = self.stack.pop().expect("balanced YAML events");
                if matches!(done, Yaml::Map(..)) {
                    self.keys.pop();
                }
                self.push_value(done);
            }
            YamlEvent::Alias(_) if self.error.is_none() => {
                self.error = Some(at(mark, "YAML aliases are not supported in definitions"));
            }
            _ => {}
        }
    }
}

fn load_yaml(src: &str) -> Result<Yaml, DefinitionError> {
    let mut b = TreeBuilder::default();
    Parser::new_from_str(src)
        .load(&mut b, false)
        .map_err(|e| DefinitionError {
            line: e.marker().line(),
            col: e.marker().col() + 1,
            message: e.info().to_owned(),
        })?;
    if let Some(e) = b.error {
        return Err(e);
    }
    b.root.ok_or(DefinitionError {
        line: 1,
        col: 1,
        message: "empty definitions file".into(),
    })
}

// ------------------------------------------------------------------ definitions

struct Def {
    id: String,
    id_mark: Marker,
    name: Option<String>,
    description: Option<String>,
    rule: String,
    rule_style: TScalarStyle,
    rule_mark: Marker,
}

fn scalar<'a>(v: &'a Yaml, what: &str, errors: &mut Vec<DefinitionError>) -> Option<&'a str> {
    match v {
        Yaml::Scalar(s, ..) => Some(s),
        other => {
            errors.push(at(other.mark(), format!("{what} must be a text value")));
            None
        }
    }
}

fn read_definitions(doc: &Yaml, errors: &mut Vec<DefinitionError>) -> Vec<Def> {
    let Yaml::Map(top, _) = doc else {
        errors.push(at(doc.mark(), "expected a mapping with a 'segments' list"));
        return Vec::new();
    };
    let mut list = None;
    for (k, v) in top {
        match scalar(k, "key", errors) {
            Some("segments") => list = Some(v),
            Some(other) => errors.push(at(
                k.mark(),
                format!("unknown top-level key '{other}'; expected 'segments'"),
            )),
            None => {}
        }
    }
    let Some(list) = list else {
        errors.push(at(doc.mark(), "missing 'segments' list"));
        return Vec::new();
    };
    let Yaml::Seq(items, _) = list else {
        errors.push(at(list.mark(), "'segments' must be a list"));
        return Vec::new();
    };
    let mut defs = Vec::new();
    for item in items {
        let Yaml::Map(fields, m) = item else {
            errors.push(at(
                item.mark(),
                "each segment must be a mapping with id and rule",
            ));
            continue;
        };
        let (mut id, mut name, mut description, mut rule) = (None, None, None, None);
        for (k, v) in fields {
            let Some(key) = scalar(k, "key", errors) else {
                continue;
            };
            match key {
                "id" => id = scalar(v, "id", errors).map(|s| (s.to_owned(), v.mark())),
                "name" => name = scalar(v, "name", errors).map(str::to_owned),
                "description" => description = scalar(v, "description", errors).map(str::to_owned),
                "rule" => {
                    if let Yaml::Scalar(s, style, mark) = v {
                        rule = Some((s.clone(), *style, *mark));
                    } else {
                        errors.push(at(v.mark(), "rule must be a text value"));
                    }
                }
                other => errors.push(at(
                    k.mark(),
                    format!(
                        "unknown key '{other}' in a segment; expected id, name, description, rule"
                    ),
                )),
            }
        }
        let Some((id, id_mark)) = id else {
            errors.push(at(*m, "segment has no 'id'"));
            continue;
        };
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_');
        if !valid {
            errors.push(at(
                id_mark,
                format!("segment id {id:?} must be 1-64 characters of a-z, 0-9, '-', '_'"),
            ));
            continue;
        }
        let Some((rule, rule_style, rule_mark)) = rule else {
            errors.push(at(*m, format!("segment '{id}' has no 'rule'")));
            continue;
        };
        defs.push(Def {
            id,
            id_mark,
            name,
            description,
            rule,
            rule_style,
            rule_mark,
        });
    }
    defs
}

/// Maps a byte offset in a rule to its line and column in the file.
fn rule_position(src: &str, d: &Def, offset: usize) -> (usize, usize) {
    // "End of rule" errors point just after the last non-blank character.
    let before = &d.rule[..offset.min(d.rule.trim_end().len())];
    let newlines = before.matches('\n').count();
    let col_in_line = before.rsplit('\n').next().map_or(0, |s| s.chars().count());
    match d.rule_style {
        TScalarStyle::Literal | TScalarStyle::Folded => {
            // Block scalar: the parser marks its first non-blank content line; columns follow
            // that line's indentation.
            let leading_blank = d.rule.len() - d.rule.trim_start_matches('\n').len();
            let line = d.rule_mark.line() + newlines.saturating_sub(leading_blank);
            let indent = src
                .lines()
                .nth(line - 1)
                .map_or(0, |l| l.len() - l.trim_start().len());
            (line, indent + col_in_line + 1)
        }
        style => {
            let quote = usize::from(matches!(
                style,
                TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted
            ));
            if newlines == 0 {
                (
                    d.rule_mark.line(),
                    d.rule_mark.col() + 1 + quote + col_in_line,
                )
            } else {
                (d.rule_mark.line() + newlines, col_in_line + 1)
            }
        }
    }
}

fn segment_refs(e: &expr::Expr, out: &mut Vec<(String, usize)>) {
    use expr::ExprKind::*;
    match &e.kind {
        Call(name, args) => {
            if name == "in_segment" {
                if let Some(expr::Expr { kind: Str(id), at }) = args.first() {
                    out.push((id.clone(), *at));
                }
            }
            args.iter().for_each(|a| segment_refs(a, out));
        }
        Not(x) | Neg(x) => segment_refs(x, out),
        Bin(_, l, r) => {
            segment_refs(l, out);
            segment_refs(r, out);
        }
        In(x, items) => {
            segment_refs(x, out);
            items.iter().for_each(|a| segment_refs(a, out));
        }
        _ => {}
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Visit {
    New,
    Visiting,
    Done,
}

/// Depth-first topological sort of segments by their `in_segment` references.
struct Topo<'a> {
    defs: &'a [Def],
    refs: &'a [Vec<(String, usize)>],
    seen: &'a HashMap<&'a str, usize>,
    state: Vec<Visit>,
    order: Vec<usize>,
    src: &'a str,
}

impl Topo<'_> {
    fn visit(&mut self, i: usize, errors: &mut Vec<DefinitionError>) {
        if self.state[i] != Visit::New {
            return;
        }
        self.state[i] = Visit::Visiting;
        for (id, off) in &self.refs[i] {
            match self.seen.get(id.as_str()) {
                None => {} // reported by the compiler, with its position
                Some(&j) if self.state[j] == Visit::Visiting => {
                    let (line, col) = rule_position(self.src, &self.defs[i], *off);
                    errors.push(DefinitionError {
                        line,
                        col,
                        message: format!(
                            "segment '{}' depends on itself through '{id}'",
                            self.defs[i].id
                        ),
                    });
                }
                Some(&j) => self.visit(j, errors),
            }
        }
        self.state[i] = Visit::Done;
        self.order.push(i);
    }
}

struct OrderScope<'a> {
    index: &'a HashMap<String, usize>,
}

impl plan::Scope for OrderScope<'_> {
    fn segment(&mut self, id: &str, at: usize) -> Result<usize, ExprError> {
        self.index.get(id).copied().ok_or_else(|| ExprError {
            offset: at,
            message: format!("unknown segment '{id}'"),
        })
    }
}

fn compile_all(src: &str, defs: Vec<Def>, errors: &mut Vec<DefinitionError>) -> SegmentSet {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut parsed = Vec::with_capacity(defs.len());
    for (i, d) in defs.iter().enumerate() {
        if seen.insert(&d.id, i).is_some() {
            errors.push(at(d.id_mark, format!("duplicate segment id '{}'", d.id)));
        }
        match expr::parse(&d.rule) {
            Ok(e) => parsed.push(Some(e)),
            Err(e) => {
                let (line, col) = rule_position(src, d, e.offset);
                errors.push(DefinitionError {
                    line,
                    col,
                    message: e.message,
                });
                parsed.push(None);
            }
        }
    }
    // Dependency order (depth-first topological sort), reporting unknown ids and cycles.
    let refs: Vec<Vec<(String, usize)>> = parsed
        .iter()
        .map(|p| {
            let mut v = Vec::new();
            if let Some(e) = p {
                segment_refs(e, &mut v);
            }
            v
        })
        .collect();
    let mut topo = Topo {
        defs: &defs,
        refs: &refs,
        seen: &seen,
        state: vec![Visit::New; defs.len()],
        order: Vec::with_capacity(defs.len()),
        src,
    };
    for i in 0..defs.len() {
        topo.visit(i, errors);
    }
    let order = topo.order;
    let index: HashMap<String, usize> = order
        .iter()
        .enumerate()
        .map(|(pos, &i)| (defs[i].id.clone(), pos))
        .collect();
    let mut segments = Vec::with_capacity(defs.len());
    let mut defs: Vec<Option<Def>> = defs.into_iter().map(Some).collect();
    for &i in &order {
        let d = defs[i].take().expect("each definition once");
        let Some(e) = &parsed[i] else { continue };
        match plan::compile(e, &mut OrderScope { index: &index }) {
            Ok((rule, plan::Type::Bool)) => segments.push(Segment {
                id: d.id,
                name: d.name,
                description: d.description,
                source: d.rule,
                rule,
            }),
            Ok((_, _)) => {
                let (line, col) = rule_position(src, &d, 0);
                errors.push(DefinitionError {
                    line,
                    col,
                    message: "a rule must be a condition (true or false)".into(),
                });
            }
            Err(e) => {
                let (line, col) = rule_position(src, &d, e.offset);
                errors.push(DefinitionError {
                    line,
                    col,
                    message: e.message,
                });
            }
        }
    }
    SegmentSet { segments }
}

#[cfg(test)]
mod tests;
