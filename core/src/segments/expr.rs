//! Rule expressions: tokens and syntax tree. Positions are byte offsets into the rule text; the
//! caller maps them to file lines and columns.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Num(f64),
    /// A duration literal such as `30m`, `24h`, `7d`, in ms.
    Dur(i64),
    Str(String),
    Ident(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Plus,
    Minus,
    Star,
    Slash,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Tok::Num(n) => write!(f, "number {n}"),
            Tok::Dur(_) => write!(f, "duration"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Ident(s) => write!(f, "'{s}'"),
            Tok::End => write!(f, "end of rule"),
            other => {
                let s = match other {
                    Tok::LParen => "(",
                    Tok::RParen => ")",
                    Tok::LBracket => "[",
                    Tok::RBracket => "]",
                    Tok::Comma => ",",
                    Tok::Dot => ".",
                    Tok::Plus => "+",
                    Tok::Minus => "-",
                    Tok::Star => "*",
                    Tok::Slash => "/",
                    Tok::Eq => "==",
                    Tok::Ne => "!=",
                    Tok::Lt => "<",
                    Tok::Le => "<=",
                    Tok::Gt => ">",
                    Tok::Ge => ">=",
                    _ => unreachable!(),
                };
                write!(f, "'{s}'")
            }
        }
    }
}

/// A problem at a byte offset of the rule text.
#[derive(Debug, Clone, PartialEq)]
pub struct ExprError {
    pub offset: usize,
    pub message: String,
}

fn err<T>(offset: usize, message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError {
        offset,
        message: message.into(),
    })
}

/// Parses a lone duration such as `30m`, `24h` or `7d` (ms).
pub fn parse_duration(src: &str) -> Option<i64> {
    match lex(src).ok()?.as_slice() {
        [(Tok::Dur(ms), _), (Tok::End, _)] if *ms > 0 => Some(*ms),
        _ => None,
    }
}

pub fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    Ok(lex_spans(src)?
        .into_iter()
        .map(|(t, at, _)| (t, at))
        .collect())
}

/// Tokens with the byte offsets where each starts and ends.
fn lex_spans(src: &str) -> Result<Vec<(Tok, usize, usize)>, ExprError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let two = |a: u8, b: u8| c == a && bytes.get(i + 1) == Some(&b);
        let tok = if two(b'=', b'=') {
            i += 2;
            Tok::Eq
        } else if two(b'!', b'=') {
            i += 2;
            Tok::Ne
        } else if two(b'<', b'=') {
            i += 2;
            Tok::Le
        } else if two(b'>', b'=') {
            i += 2;
            Tok::Ge
        } else if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            let text = &src[start..i];
            let n: f64 = text.parse().map_err(|_| ExprError {
                offset: start,
                message: format!("bad number {text:?}"),
            })?;
            let unit_end = {
                let mut j = i;
                while j < bytes.len() && bytes[j].is_ascii_alphabetic() {
                    j += 1;
                }
                j
            };
            if unit_end > i {
                let unit = &src[i..unit_end];
                let ms = match unit {
                    "ms" => 1.0,
                    "s" => 1_000.0,
                    "m" | "min" => 60_000.0,
                    "h" => 3_600_000.0,
                    "d" => 86_400_000.0,
                    "w" => 7.0 * 86_400_000.0,
                    _ => {
                        return err(
                            i,
                            format!(
                                "unknown duration unit {unit:?}: use ms, s, m (or min), h, d or w"
                            ),
                        )
                    }
                };
                i = unit_end;
                Tok::Dur((n * ms) as i64)
            } else {
                Tok::Num(n)
            }
        } else if c == b'"' || c == b'\'' {
            i += 1;
            let mut s = String::new();
            loop {
                match bytes.get(i) {
                    None => return err(start, "unterminated string"),
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < bytes.len() => {
                        // The escaped character may be several bytes long (`'\é'`).
                        let ch = src[i + 1..].chars().next().expect("in bounds");
                        s.push(ch);
                        i += 1 + ch.len_utf8();
                    }
                    Some(_) => {
                        let ch = src[i..].chars().next().expect("in bounds");
                        s.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            Tok::Str(s)
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            Tok::Ident(src[start..i].to_owned())
        } else {
            i += 1;
            match c {
                b'(' => Tok::LParen,
                b')' => Tok::RParen,
                b'[' => Tok::LBracket,
                b']' => Tok::RBracket,
                b',' => Tok::Comma,
                b'.' => Tok::Dot,
                b'+' => Tok::Plus,
                b'-' => Tok::Minus,
                b'*' => Tok::Star,
                b'/' => Tok::Slash,
                b'<' => Tok::Lt,
                b'>' => Tok::Gt,
                b'=' => return err(start, "'=' is not an operator: use '==' to compare"),
                _ => {
                    let ch = src[start..].chars().next().expect("in bounds");
                    return err(start, format!("unexpected character {ch:?}"));
                }
            }
        };
        out.push((tok, start, i));
    }
    out.push((Tok::End, src.len(), src.len()));
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    /// The same comparison with its sides swapped (`5 < x` is `x > 5`).
    pub fn flipped(self) -> BinOp {
        match self {
            BinOp::Lt => BinOp::Gt,
            BinOp::Le => BinOp::Ge,
            BinOp::Gt => BinOp::Lt,
            BinOp::Ge => BinOp::Le,
            other => other,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
}

/// Syntax tree node with the offsets where it starts and ends (`src[at..end]` is its text,
/// without enclosing parentheses).
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub at: usize,
    pub end: usize,
    pub kind: ExprKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Num(f64),
    Dur(i64),
    Str(String),
    Bool(bool),
    /// A dotted attribute path such as `orders.count`.
    Path(String),
    Call(String, Vec<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    In(Box<Expr>, Vec<Expr>),
}

struct Parser {
    toks: Vec<(Tok, usize, usize)>,
    pos: usize,
    /// End offset of the last token taken.
    last_end: usize,
}

pub fn parse(src: &str) -> Result<Expr, ExprError> {
    let mut p = Parser {
        toks: lex_spans(src)?,
        pos: 0,
        last_end: 0,
    };
    let e = p.or()?;
    match p.peek() {
        Tok::End => Ok(e),
        t => err(
            p.at(),
            format!("unexpected {t} after a complete expression"),
        ),
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }
    fn at(&self) -> usize {
        self.toks[self.pos].1
    }
    fn bump(&mut self) -> (Tok, usize) {
        let (t, at, end) = self.toks[self.pos].clone();
        self.last_end = end;
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        (t, at)
    }
    fn keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s == kw)
    }
    fn expect(&mut self, want: Tok, what: &str) -> Result<usize, ExprError> {
        if *self.peek() == want {
            Ok(self.bump().1)
        } else {
            err(self.at(), format!("expected {what}, found {}", self.peek()))
        }
    }

    fn bin(at: usize, op: BinOp, l: Expr, r: Expr) -> Expr {
        Expr {
            at,
            end: r.end,
            kind: ExprKind::Bin(op, Box::new(l), Box::new(r)),
        }
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.and()?;
        while self.keyword("or") {
            self.bump();
            let r = self.and()?;
            l = Self::bin(l.at, BinOp::Or, l, r);
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.not()?;
        while self.keyword("and") {
            self.bump();
            let r = self.not()?;
            l = Self::bin(l.at, BinOp::And, l, r);
        }
        Ok(l)
    }

    fn not(&mut self) -> Result<Expr, ExprError> {
        if self.keyword("not") {
            let at = self.bump().1;
            let e = self.not()?;
            return Ok(Expr {
                at,
                end: e.end,
                kind: ExprKind::Not(Box::new(e)),
            });
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Expr, ExprError> {
        let l = self.sum()?;
        let op = match self.peek() {
            Tok::Eq => BinOp::Eq,
            Tok::Ne => BinOp::Ne,
            Tok::Lt => BinOp::Lt,
            Tok::Le => BinOp::Le,
            Tok::Gt => BinOp::Gt,
            Tok::Ge => BinOp::Ge,
            Tok::Ident(s) if s == "in" => {
                self.bump();
                self.expect(Tok::LBracket, "'[' after 'in'")?;
                let mut items = vec![self.sum()?];
                while *self.peek() == Tok::Comma {
                    self.bump();
                    items.push(self.sum()?);
                }
                self.expect(Tok::RBracket, "']' to close the list")?;
                return Ok(Expr {
                    at: l.at,
                    end: self.last_end,
                    kind: ExprKind::In(Box::new(l), items),
                });
            }
            _ => return Ok(l),
        };
        self.bump();
        let r = self.sum()?;
        if matches!(
            self.peek(),
            Tok::Eq | Tok::Ne | Tok::Lt | Tok::Le | Tok::Gt | Tok::Ge
        ) {
            return err(self.at(), "comparisons do not chain: join them with 'and'");
        }
        Ok(Self::bin(l.at, op, l, r))
    }

    fn sum(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.term()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => BinOp::Add,
                Tok::Minus => BinOp::Sub,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.term()?;
            l = Self::bin(l.at, op, l, r);
        }
    }

    fn term(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Star => BinOp::Mul,
                Tok::Slash => BinOp::Div,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.unary()?;
            l = Self::bin(l.at, op, l, r);
        }
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if *self.peek() == Tok::Minus {
            let at = self.bump().1;
            let e = self.unary()?;
            return Ok(Expr {
                at,
                end: e.end,
                kind: ExprKind::Neg(Box::new(e)),
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let (tok, at) = self.bump();
        let kind = match tok {
            Tok::Num(n) => ExprKind::Num(n),
            Tok::Dur(d) => ExprKind::Dur(d),
            Tok::Str(s) => ExprKind::Str(s),
            Tok::LParen => {
                let e = self.or()?;
                self.expect(Tok::RParen, "')'")?;
                // The group's span takes its parentheses: `(a + b) / c` is the text of the
                // division, not `a + b) / c`.
                return Ok(Expr {
                    at,
                    end: self.last_end,
                    ..e
                });
            }
            Tok::Ident(s) if s == "true" || s == "false" => ExprKind::Bool(s == "true"),
            Tok::Ident(s) if matches!(s.as_str(), "and" | "or" | "not" | "in") => {
                return err(at, format!("expected a value, found '{s}'"))
            }
            // `since(last addToCart)` reads better; `last` adds nothing to the meaning.
            Tok::Ident(s) if s == "last" && matches!(self.peek(), Tok::Ident(_)) => {
                return self.primary()
            }
            Tok::Ident(name) => {
                if *self.peek() == Tok::LParen {
                    self.bump();
                    let mut args = Vec::new();
                    if *self.peek() != Tok::RParen {
                        args.push(self.or()?);
                        while *self.peek() == Tok::Comma {
                            self.bump();
                            args.push(self.or()?);
                        }
                    }
                    self.expect(Tok::RParen, "')' to close the call")?;
                    ExprKind::Call(name, args)
                } else {
                    let mut path = name;
                    while *self.peek() == Tok::Dot {
                        self.bump();
                        match self.bump() {
                            (Tok::Ident(part), _) => {
                                path.push('.');
                                path.push_str(&part);
                            }
                            (t, at) => {
                                return err(at, format!("expected a name after '.', found {t}"))
                            }
                        }
                    }
                    ExprKind::Path(path)
                }
            }
            t => return err(at, format!("expected a value, found {t}")),
        };
        Ok(Expr {
            at,
            end: self.last_end,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_binds_and_tighter_than_or_and_arithmetic_tighter_than_comparison() {
        let e = parse("a.b > 1 + 2 * 3 or c == 'x' and not d").unwrap();
        let ExprKind::Bin(BinOp::Or, l, r) = e.kind else {
            panic!("{e:?}")
        };
        assert!(matches!(l.kind, ExprKind::Bin(BinOp::Gt, _, _)));
        assert!(matches!(r.kind, ExprKind::Bin(BinOp::And, _, _)));
    }

    #[test]
    fn durations_and_calls() {
        let e = parse("count(addToCart, 24h) >= 2").unwrap();
        let ExprKind::Bin(BinOp::Ge, l, _) = e.kind else {
            panic!()
        };
        let ExprKind::Call(name, args) = l.kind else {
            panic!()
        };
        assert_eq!(name, "count");
        assert_eq!(args[1].kind, ExprKind::Dur(86_400_000));
    }

    /// Regression: a backslash before a multi-byte character panicked the lexer (`tailor check`
    /// exited 101; a SIGHUP with such a file stopped the worker).
    #[test]
    fn lexer_escape_before_a_multibyte_character_does_not_panic() {
        let toks = lex("city == '\\é' or x == \"\\€\\\\\"").unwrap();
        let strings: Vec<&str> = toks
            .iter()
            .filter_map(|(t, _)| match t {
                Tok::Str(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(strings, ["é", "€\\"]);
        // A backslash as the last byte is an unterminated string, not a panic.
        assert!(lex("a == '\\").is_err());
        assert!(lex("'\\é").is_err());
    }

    macro_rules! syntax_errors {
        ($($name:ident: $src:expr => ($off:expr, $msg:expr);)*) => {$(
            #[test]
            fn $name() {
                let e = parse($src).unwrap_err();
                assert_eq!(e.offset, $off, "{e:?}");
                assert!(e.message.contains($msg), "{e:?}");
            }
        )*};
    }

    syntax_errors! {
        single_equals: "a = 1" => (2, "use '=='");
        unterminated: "a == 'x" => (5, "unterminated");
        bad_unit: "count(x, 5y) > 1" => (10, "unknown duration unit");
        dangling_and: "a == 1 and" => (10, "expected a value");
        chained_comparison: "1 < a < 3" => (6, "do not chain");
        unclosed_paren: "(a == 1" => (7, "expected ')'");
        trailing_token: "a == 1 b" => (7, "after a complete expression");
        stray_char: "a == 1 & b" => (7, "unexpected character");
    }
}
