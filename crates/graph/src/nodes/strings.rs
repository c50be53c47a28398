//! String manipulation (InvokeAI's `strings.py`): split on the first delimiter, split out the
//! `[negative]` parts of a prompt, join, and replace (literal, case-insensitive, or by regular
//! expression).
//!
//! The reference replaces with Python's `re.sub`, so this file carries a small backtracking
//! engine for Python's regular-expression syntax (groups, named groups, classes, anchors,
//! lazy and counted repeats, lookarounds, backreferences, the `i`/`s`/`m` flags) and for the
//! `\1` / `\g<name>` replacement templates. Pattern errors fail the node with `error`, the
//! class name of Python's `re.error`.

use super::primitives::tagged;
use super::{fields, node, value_output};
use crate::field::Ty;
use crate::spec::{Input, Inputs, NodeSpec};
use crate::NodeError;
use serde_json::{json, Map, Value};

fn text(name: &'static str, desc: &'static str) -> Input {
    Input::new(name, Ty::Str).default(json!("")).desc(desc)
}

/// Text outside `[...]` goes to the positive string, text inside to the negative one; each
/// unescaped `[` adds a space to the negative string, and an unescaped `]` is dropped.
fn split_negative(input: &str) -> (String, String) {
    let (mut positive, mut negative) = (String::new(), String::new());
    let mut depth: i64 = 0;
    let mut escaped = false;
    for c in input.chars() {
        let mut seen = c;
        if c == '[' && !escaped {
            negative.push(' ');
            depth += 1;
        } else if c == ']' && !escaped {
            depth -= 1;
            seen = ' ';
        } else if depth > 0 {
            negative.push(c);
        } else {
            positive.push(c);
        }
        // A backslash escapes the next character unless it is itself escaped.
        escaped = seen == '\\' && !escaped;
    }
    (positive, negative)
}

fn string_split(i: &Inputs) -> Result<Map<String, Value>, NodeError> {
    let (string, delimiter) = (i.str("string")?, i.str("delimiter")?);
    // Python's str.split rejects an empty separator (whatever the field's description says).
    if delimiter.is_empty() {
        return Err(NodeError::value("empty separator"));
    }
    let (first, second) = string.split_once(delimiter).unwrap_or((string, ""));
    Ok(fields(vec![
        ("string_1", json!(first)),
        ("string_2", json!(second)),
    ]))
}

fn string_replace(i: &Inputs) -> Result<Map<String, Value>, NodeError> {
    let string = i.str("string")?;
    let search = i.str("search_string")?;
    let replace = i.str("replace_string")?;
    if search.is_empty() {
        return Ok(value_output(json!(string)));
    }
    let regex = if i.bool("use_regex")? {
        regex::Regex::new(search)
    } else {
        Ok(regex::Regex::literal(search, true))
    }
    .map_err(regex::Error::into_node_error)?;
    let result = regex
        .sub(replace, string)
        .map_err(regex::Error::into_node_error)?;
    Ok(value_output(json!(result)))
}

pub fn specs() -> Vec<NodeSpec> {
    vec![
        tagged(
            node(
                "string_split_neg",
                "String Split Negative",
                "1.0.1",
                "strings",
                vec![text("string", "String to split")],
                "string_pos_neg_output",
                vec![("positive_string", Ty::Str), ("negative_string", Ty::Str)],
                |i, _| {
                    let (positive, negative) = split_negative(i.str("string")?);
                    Ok(fields(vec![
                        ("positive_string", json!(positive)),
                        ("negative_string", json!(negative)),
                    ]))
                },
            ),
            &["string", "split", "negative"],
            "Splits a string in two: text inside [] goes to the negative string (each [ adding \
             a space), the rest to the positive one",
        ),
        tagged(
            node(
                "string_split",
                "String Split",
                "1.0.1",
                "strings",
                vec![
                    text("string", "String to split"),
                    text(
                        "delimiter",
                        "Delimiter to spilt with. blank will split on the first whitespace",
                    ),
                ],
                "string_2_output",
                vec![("string_1", Ty::Str), ("string_2", Ty::Str)],
                |i, _| string_split(i),
            ),
            &["string", "split"],
            "Splits a string in two at the first occurrence of the delimiter, which is removed",
        ),
        tagged(
            node(
                "string_join",
                "String Join",
                "1.0.1",
                "strings",
                vec![
                    text("string_left", "String Left"),
                    text("string_right", "String Right"),
                ],
                "string_output",
                vec![("value", Ty::Str)],
                |i, _| {
                    let joined = [i.str("string_left")?, i.str("string_right")?].concat();
                    Ok(value_output(json!(joined)))
                },
            ),
            &["string", "join"],
            "Joins the left string to the right string",
        ),
        tagged(
            node(
                "string_join_three",
                "String Join Three",
                "1.0.1",
                "strings",
                vec![
                    text("string_left", "String Left"),
                    text("string_middle", "String Middle"),
                    text("string_right", "String Right"),
                ],
                "string_output",
                vec![("value", Ty::Str)],
                |i, _| {
                    let joined = [
                        i.str("string_left")?,
                        i.str("string_middle")?,
                        i.str("string_right")?,
                    ]
                    .concat();
                    Ok(value_output(json!(joined)))
                },
            ),
            &["string", "join"],
            "Joins the left, middle and right strings",
        ),
        tagged(
            node(
                "string_replace",
                "String Replace",
                "1.0.1",
                "strings",
                vec![
                    text("string", "String to work on"),
                    text("search_string", "String to search for"),
                    text("replace_string", "String to replace the search"),
                    Input::new("use_regex", Ty::Bool)
                        .default(json!(false))
                        .desc(
                            "Use search string as a regex expression (non regex is case \
                             insensitive)",
                        ),
                ],
                "string_output",
                vec![("value", Ty::Str)],
                |i, _| string_replace(i),
            ),
            &["string", "replace", "regex"],
            "Replaces the search string with the replace string",
        ),
    ]
}

/// A backtracking matcher for Python's `re` syntax, enough for `re.sub`.
mod regex {
    use crate::NodeError;

    /// Work allowed per search before giving up, so a pathological pattern cannot hang a
    /// worker (Python would run on).
    const STEP_LIMIT: u64 = 5_000_000;
    /// Nesting allowed while matching; each repeat iteration nests once.
    const DEPTH_LIMIT: u32 = 20_000;

    #[derive(Debug)]
    pub enum Error {
        /// `re.error` with its message.
        Pattern(String),
        /// The matcher ran out of steps or depth.
        TooComplex,
    }

    impl Error {
        pub fn into_node_error(self) -> NodeError {
            match self {
                Self::Pattern(msg) => NodeError::new("error", msg),
                Self::TooComplex => NodeError::new(
                    "RecursionError",
                    "regular expression too complex for this input",
                ),
            }
        }
    }

    fn perr<T>(msg: impl Into<String>) -> Result<T, Error> {
        Err(Error::Pattern(msg.into()))
    }

    #[derive(Debug, Clone)]
    enum Item {
        Range(char, char),
        Digit(bool),
        Word(bool),
        Space(bool),
    }

    #[derive(Debug, Clone)]
    enum Node {
        Empty,
        Char(char),
        Any,
        Class(bool, Vec<Item>),
        LineStart,
        LineEnd,
        TextStart,
        TextEnd,
        Boundary(bool),
        Group(Box<Node>, Option<usize>),
        Look {
            inner: Box<Node>,
            ahead: bool,
            negate: bool,
        },
        Backref(usize),
        Concat(Vec<Node>),
        Alt(Vec<Node>),
        Repeat {
            inner: Box<Node>,
            min: usize,
            max: Option<usize>,
            greedy: bool,
        },
    }

    #[derive(Debug, Clone, Copy, Default)]
    struct Flags {
        icase: bool,
        dotall: bool,
        multiline: bool,
    }

    #[derive(Debug)]
    pub struct Regex {
        root: Node,
        groups: usize,
        names: Vec<(String, usize)>,
        flags: Flags,
    }

    struct Parser<'a> {
        chars: Vec<char>,
        pos: usize,
        groups: usize,
        names: Vec<(String, usize)>,
        flags: &'a mut Flags,
    }

    fn is_word(c: char) -> bool {
        c.is_alphanumeric() || c == '_'
    }

    fn is_digit(c: char) -> bool {
        c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())
    }

    fn is_space(c: char) -> bool {
        c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
    }

    impl Parser<'_> {
        fn peek(&self) -> Option<char> {
            self.chars.get(self.pos).copied()
        }

        fn eat(&mut self, c: char) -> bool {
            if self.peek() == Some(c) {
                self.pos += 1;
                true
            } else {
                false
            }
        }

        fn alt(&mut self) -> Result<Node, Error> {
            let mut branches = vec![self.concat()?];
            while self.eat('|') {
                branches.push(self.concat()?);
            }
            Ok(if branches.len() == 1 {
                branches.pop().unwrap_or(Node::Empty)
            } else {
                Node::Alt(branches)
            })
        }

        fn concat(&mut self) -> Result<Node, Error> {
            let mut items = Vec::new();
            while let Some(c) = self.peek() {
                if c == '|' || c == ')' {
                    break;
                }
                let start = self.pos;
                let atom = self.atom()?;
                items.push(self.quantified(atom, start)?);
            }
            Ok(Node::Concat(items))
        }

        /// Reads `{m,n}` at the cursor; `None` (cursor unmoved) when it is not a repeat.
        fn braces(&mut self) -> Option<(usize, Option<usize>)> {
            let save = self.pos;
            self.pos += 1;
            let number = |p: &mut Self| {
                let from = p.pos;
                while p.peek().is_some_and(|c| c.is_ascii_digit()) {
                    p.pos += 1;
                }
                let digits: String = p.chars[from..p.pos].iter().collect();
                (!digits.is_empty()).then(|| digits.parse::<usize>().unwrap_or(usize::MAX))
            };
            let min = number(self);
            let result = if self.eat(',') {
                let max = number(self);
                Some((min.unwrap_or(0), max))
            } else {
                min.map(|m| (m, Some(m)))
            };
            match result {
                Some(r) if self.eat('}') => Some(r),
                _ => {
                    self.pos = save;
                    None
                }
            }
        }

        fn quantified(&mut self, atom: Node, start: usize) -> Result<Node, Error> {
            let here = self.pos;
            let (min, max) = match self.peek() {
                Some('*') => {
                    self.pos += 1;
                    (0, None)
                }
                Some('+') => {
                    self.pos += 1;
                    (1, None)
                }
                Some('?') => {
                    self.pos += 1;
                    (0, Some(1))
                }
                Some('{') => match self.braces() {
                    Some(b) => b,
                    None => return Ok(atom),
                },
                _ => return Ok(atom),
            };
            if matches!(
                atom,
                Node::LineStart
                    | Node::LineEnd
                    | Node::TextStart
                    | Node::TextEnd
                    | Node::Boundary(_)
                    | Node::Empty
            ) || start == here
            {
                return perr(format!("nothing to repeat at position {start}"));
            }
            if max.is_some_and(|m| m < min) {
                return perr(format!(
                    "min repeat greater than max repeat at position {}",
                    here + 1
                ));
            }
            let greedy = !self.eat('?');
            if matches!(self.peek(), Some('*' | '+' | '?'))
                || (self.peek() == Some('{') && self.braces().is_some())
            {
                return perr(format!("multiple repeat at position {}", self.pos));
            }
            Ok(Node::Repeat {
                inner: Box::new(atom),
                min,
                max,
                greedy,
            })
        }

        fn name(&mut self, end: char) -> Result<String, Error> {
            let from = self.pos;
            while self.peek().is_some_and(|c| c != end) {
                self.pos += 1;
            }
            let name: String = self.chars[from..self.pos].iter().collect();
            if !self.eat(end) {
                return perr(format!(
                    "missing {end}, unterminated name at position {from}"
                ));
            }
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && name.chars().all(is_word);
            if !valid {
                return perr(format!(
                    "bad character in group name '{name}' at position {from}"
                ));
            }
            Ok(name)
        }

        fn group(&mut self, open: usize) -> Result<Node, Error> {
            let mut capture = true;
            let mut look = None;
            let mut name = None;
            if self.eat('?') {
                capture = false;
                match self.peek() {
                    Some(':') => self.pos += 1,
                    Some('P') => {
                        self.pos += 1;
                        if self.eat('<') {
                            name = Some(self.name('>')?);
                            capture = true;
                        } else if self.eat('=') {
                            let at = self.pos;
                            let n = self.name(')')?;
                            return match self.names.iter().find(|(k, _)| *k == n) {
                                Some((_, idx)) => Ok(Node::Backref(*idx)),
                                None => perr(format!("unknown group name '{n}' at position {at}")),
                            };
                        } else {
                            return perr(format!("unknown extension ?P at position {}", open + 1));
                        }
                    }
                    Some('=') => {
                        self.pos += 1;
                        look = Some((true, false));
                    }
                    Some('!') => {
                        self.pos += 1;
                        look = Some((true, true));
                    }
                    Some('<') if self.chars.get(self.pos + 1) == Some(&'=') => {
                        self.pos += 2;
                        look = Some((false, false));
                    }
                    Some('<') if self.chars.get(self.pos + 1) == Some(&'!') => {
                        self.pos += 2;
                        look = Some((false, true));
                    }
                    Some('<') => {
                        self.pos += 1;
                        name = Some(self.name('>')?);
                        capture = true;
                    }
                    Some('#') => {
                        while self.peek().is_some_and(|c| c != ')') {
                            self.pos += 1;
                        }
                        if !self.eat(')') {
                            return perr(
                                "missing ), unterminated comment at position ".to_owned()
                                    + &open.to_string(),
                            );
                        }
                        return Ok(Node::Empty);
                    }
                    Some(c) if "imsaux".contains(c) => {
                        while let Some(f) = self.peek().filter(|f| "imsaux".contains(*f)) {
                            match f {
                                'i' => self.flags.icase = true,
                                's' => self.flags.dotall = true,
                                'm' => self.flags.multiline = true,
                                'x' => {
                                    return perr(
                                        "verbose patterns (?x) are not supported by this server",
                                    )
                                }
                                _ => {}
                            }
                            self.pos += 1;
                        }
                        if self.eat(')') {
                            return Ok(Node::Empty);
                        }
                        return perr(format!(
                            "scoped inline flags are not supported by this server (position {open})"
                        ));
                    }
                    Some(c) => {
                        return perr(format!("unknown extension ?{c} at position {}", open + 1))
                    }
                    None => {
                        return perr(format!(
                            "unexpected end of pattern at position {}",
                            self.pos
                        ))
                    }
                }
            }
            let index = if capture {
                self.groups += 1;
                if let Some(n) = name {
                    if self.names.iter().any(|(k, _)| *k == n) {
                        return perr(format!(
                            "redefinition of group name '{n}' as group {} at position {}",
                            self.groups,
                            open + 4
                        ));
                    }
                    self.names.push((n, self.groups));
                }
                Some(self.groups)
            } else {
                None
            };
            let inner = self.alt()?;
            if !self.eat(')') {
                return perr(format!(
                    "missing ), unterminated subpattern at position {open}"
                ));
            }
            Ok(match look {
                Some((ahead, negate)) => Node::Look {
                    inner: Box::new(inner),
                    ahead,
                    negate,
                },
                None => Node::Group(Box::new(inner), index),
            })
        }

        fn hex(&mut self, len: usize, at: usize, letter: char) -> Result<char, Error> {
            let digits: String = self.chars.iter().skip(self.pos).take(len).collect();
            if digits.len() != len || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
                return perr(format!(
                    "incomplete escape \\{letter}{digits} at position {at}"
                ));
            }
            self.pos += len;
            u32::from_str_radix(&digits, 16)
                .ok()
                .and_then(char::from_u32)
                .map_or_else(
                    || perr(format!("bad escape \\{letter}{digits} at position {at}")),
                    Ok,
                )
        }

        fn octal(&mut self, first: char) -> char {
            let mut value = first.to_digit(8).unwrap_or(0);
            for _ in 0..2 {
                match self.peek().and_then(|c| c.to_digit(8)) {
                    Some(d) => {
                        value = value * 8 + d;
                        self.pos += 1;
                    }
                    None => break,
                }
            }
            char::from_u32(value).unwrap_or('\0')
        }

        /// An escape after `\`, in a class (`in_class`) or not.
        fn escape(&mut self, in_class: bool) -> Result<Node, Error> {
            let at = self.pos - 1;
            let Some(c) = self.peek() else {
                return perr(format!("bad escape (end of pattern) at position {at}"));
            };
            self.pos += 1;
            let class = |item: Item| Node::Class(false, vec![item]);
            Ok(match c {
                'd' => class(Item::Digit(true)),
                'D' => class(Item::Digit(false)),
                'w' => class(Item::Word(true)),
                'W' => class(Item::Word(false)),
                's' => class(Item::Space(true)),
                'S' => class(Item::Space(false)),
                'a' => Node::Char('\x07'),
                'f' => Node::Char('\x0c'),
                'n' => Node::Char('\n'),
                'r' => Node::Char('\r'),
                't' => Node::Char('\t'),
                'v' => Node::Char('\x0b'),
                'b' if in_class => Node::Char('\x08'),
                'b' => Node::Boundary(true),
                'B' if !in_class => Node::Boundary(false),
                'A' if !in_class => Node::TextStart,
                'Z' if !in_class => Node::TextEnd,
                'x' => Node::Char(self.hex(2, at, 'x')?),
                'u' => Node::Char(self.hex(4, at, 'u')?),
                'U' => Node::Char(self.hex(8, at, 'U')?),
                '0' => Node::Char(self.octal('0')),
                '1'..='9' if in_class => {
                    if c <= '7'
                        && self.peek().is_some_and(|d| d.is_digit(8))
                        && self.chars.get(self.pos + 1).is_some_and(|d| d.is_digit(8))
                    {
                        Node::Char(self.octal(c))
                    } else {
                        return perr(format!("bad escape \\{c} at position {at}"));
                    }
                }
                '1'..='9' => {
                    let mut n = c.to_digit(10).unwrap_or(0) as usize;
                    if let Some(d) = self.peek().and_then(|d| d.to_digit(10)) {
                        if c <= '7'
                            && d < 8
                            && self.chars.get(self.pos + 1).is_some_and(|e| e.is_digit(8))
                        {
                            return Ok(Node::Char(self.octal(c)));
                        }
                        n = n * 10 + d as usize;
                        self.pos += 1;
                    }
                    if n > self.groups {
                        return perr(format!(
                            "invalid group reference {n} at position {}",
                            at + 1
                        ));
                    }
                    Node::Backref(n)
                }
                c if c.is_ascii_alphanumeric() => {
                    return perr(format!("bad escape \\{c} at position {at}"))
                }
                c => Node::Char(c),
            })
        }

        fn class(&mut self, open: usize) -> Result<Node, Error> {
            let negated = self.eat('^');
            let mut items = Vec::new();
            let mut first = true;
            loop {
                let Some(c) = self.peek() else {
                    return perr(format!("unterminated character set at position {open}"));
                };
                if c == ']' && !first {
                    self.pos += 1;
                    break;
                }
                first = false;
                let item_at = self.pos;
                let low = self.class_atom()?;
                let is_range = self.peek() == Some('-')
                    && self.chars.get(self.pos + 1).is_some_and(|n| *n != ']');
                if !is_range {
                    items.push(low);
                    continue;
                }
                self.pos += 1;
                let high = self.class_atom()?;
                match (low, high) {
                    (Item::Range(a, _), Item::Range(b, _)) if a <= b => {
                        items.push(Item::Range(a, b));
                    }
                    _ => {
                        let end = self.pos;
                        let text: String = self.chars[item_at..end].iter().collect();
                        return perr(format!("bad character range {text} at position {item_at}"));
                    }
                }
            }
            Ok(Node::Class(negated, items))
        }

        fn class_atom(&mut self) -> Result<Item, Error> {
            let Some(c) = self.peek() else {
                return perr(format!(
                    "unterminated character set at position {}",
                    self.pos
                ));
            };
            self.pos += 1;
            if c != '\\' {
                return Ok(Item::Range(c, c));
            }
            match self.escape(true)? {
                Node::Char(ch) => Ok(Item::Range(ch, ch)),
                Node::Class(_, mut items) => Ok(items.pop().unwrap_or(Item::Range('\0', '\0'))),
                _ => perr(format!("bad escape at position {}", self.pos)),
            }
        }

        fn atom(&mut self) -> Result<Node, Error> {
            let at = self.pos;
            let Some(c) = self.peek() else {
                return Ok(Node::Empty);
            };
            self.pos += 1;
            match c {
                '(' => self.group(at),
                '[' => self.class(at),
                '.' => Ok(Node::Any),
                '^' => Ok(Node::LineStart),
                '$' => Ok(Node::LineEnd),
                '\\' => self.escape(false),
                '*' | '+' | '?' => perr(format!("nothing to repeat at position {at}")),
                '{' => {
                    self.pos = at;
                    if self.braces().is_some() {
                        perr(format!("nothing to repeat at position {at}"))
                    } else {
                        self.pos = at + 1;
                        Ok(Node::Char('{'))
                    }
                }
                c => Ok(Node::Char(c)),
            }
        }
    }

    struct Matcher<'t> {
        text: &'t [char],
        caps: Vec<Option<(usize, usize)>>,
        flags: Flags,
        steps: u64,
        depth: u32,
        failed: bool,
    }

    type Cont<'k, 't> = &'k mut dyn FnMut(&mut Matcher<'t>, usize) -> bool;

    fn same_char(a: char, b: char, icase: bool) -> bool {
        a == b || (icase && fold(a) == fold(b))
    }

    /// A simple case fold: the single-character lowercase form.
    fn fold(c: char) -> char {
        let mut lower = c.to_lowercase();
        match (lower.next(), lower.next()) {
            (Some(l), None) => l,
            _ => c,
        }
    }

    impl Item {
        fn matches(&self, c: char, icase: bool) -> bool {
            match *self {
                Item::Range(a, b) => {
                    (a..=b).contains(&c)
                        || (icase
                            && [fold(c), c.to_uppercase().next().unwrap_or(c)]
                                .iter()
                                .any(|x| (a..=b).contains(x)))
                }
                Item::Digit(yes) => is_digit(c) == yes,
                Item::Word(yes) => is_word(c) == yes,
                Item::Space(yes) => is_space(c) == yes,
            }
        }
    }

    impl<'t> Matcher<'t> {
        fn m(&mut self, node: &Node, i: usize, k: Cont<'_, 't>) -> bool {
            self.steps += 1;
            if self.steps > STEP_LIMIT || self.depth > DEPTH_LIMIT {
                self.failed = true;
            }
            if self.failed {
                return false;
            }
            self.depth += 1;
            let result = self.step(node, i, k);
            self.depth -= 1;
            result
        }

        fn step(&mut self, node: &Node, i: usize, k: Cont<'_, 't>) -> bool {
            let text = self.text;
            let flags = self.flags;
            let at = text.get(i).copied();
            match node {
                Node::Empty => k(self, i),
                Node::Char(c) => match at {
                    Some(t) if same_char(*c, t, flags.icase) => k(self, i + 1),
                    _ => false,
                },
                Node::Any => match at {
                    Some(t) if flags.dotall || t != '\n' => k(self, i + 1),
                    _ => false,
                },
                Node::Class(negated, items) => match at {
                    Some(t) if items.iter().any(|it| it.matches(t, flags.icase)) != *negated => {
                        k(self, i + 1)
                    }
                    _ => false,
                },
                Node::LineStart => {
                    (i == 0 || (flags.multiline && text[i - 1] == '\n')) && k(self, i)
                }
                Node::LineEnd => {
                    let end = i == text.len()
                        || (text[i] == '\n' && (flags.multiline || i + 1 == text.len()));
                    end && k(self, i)
                }
                Node::TextStart => i == 0 && k(self, i),
                Node::TextEnd => i == text.len() && k(self, i),
                Node::Boundary(yes) => {
                    let before = i > 0 && is_word(text[i - 1]);
                    let after = at.is_some_and(is_word);
                    ((before != after) == *yes) && k(self, i)
                }
                Node::Group(inner, None) => self.m(inner, i, k),
                Node::Group(inner, Some(idx)) => {
                    let idx = *idx;
                    self.m(inner, i, &mut |s: &mut Matcher<'t>, j| {
                        let old = s.caps[idx];
                        s.caps[idx] = Some((i, j));
                        if k(s, j) {
                            return true;
                        }
                        s.caps[idx] = old;
                        false
                    })
                }
                Node::Look {
                    inner,
                    ahead,
                    negate,
                } => {
                    let saved = self.caps.clone();
                    let found = if *ahead {
                        self.m(inner, i, &mut |_, _| true)
                    } else {
                        (0..=i)
                            .rev()
                            .any(|from| self.m(inner, from, &mut |_, j| j == i))
                    };
                    if *negate {
                        self.caps = saved;
                        !found && k(self, i)
                    } else if found {
                        k(self, i) || {
                            self.caps = saved;
                            false
                        }
                    } else {
                        false
                    }
                }
                Node::Backref(idx) => match self.caps.get(*idx).copied().flatten() {
                    Some((s, e)) => {
                        let len = e - s;
                        let fits = i + len <= text.len()
                            && (0..len).all(|n| same_char(text[s + n], text[i + n], flags.icase));
                        fits && k(self, i + len)
                    }
                    None => false,
                },
                Node::Concat(items) => self.seq(items, i, k),
                Node::Alt(branches) => branches.iter().any(|b| self.m(b, i, k)),
                Node::Repeat {
                    inner,
                    min,
                    max,
                    greedy,
                } => self.rep(inner, *min, *max, *greedy, 0, i, k),
            }
        }

        fn seq(&mut self, items: &[Node], i: usize, k: Cont<'_, 't>) -> bool {
            match items.split_first() {
                None => k(self, i),
                Some((first, rest)) => {
                    self.m(first, i, &mut |s: &mut Matcher<'t>, j| s.seq(rest, j, k))
                }
            }
        }

        #[allow(clippy::too_many_arguments)]
        fn rep(
            &mut self,
            inner: &Node,
            min: usize,
            max: Option<usize>,
            greedy: bool,
            count: usize,
            i: usize,
            k: Cont<'_, 't>,
        ) -> bool {
            if count < min {
                return self.m(inner, i, &mut |s: &mut Matcher<'t>, j| {
                    s.rep(inner, min, max, greedy, count + 1, j, k)
                });
            }
            let more = max.is_none_or(|m| count < m);
            // An iteration past the minimum must consume something, or it would loop.
            let again = |s: &mut Matcher<'t>, k: Cont<'_, 't>| {
                s.m(inner, i, &mut |s: &mut Matcher<'t>, j| {
                    j != i && s.rep(inner, min, max, greedy, count + 1, j, k)
                })
            };
            // Greedy repeats try one more iteration before the rest; lazy ones after.
            if greedy {
                if more && again(self, k) {
                    return true;
                }
                k(self, i)
            } else {
                if k(self, i) {
                    return true;
                }
                more && again(self, k)
            }
        }
    }

    /// One piece of a replacement template.
    enum Piece {
        Text(String),
        Group(usize),
    }

    impl Regex {
        pub fn new(pattern: &str) -> Result<Self, Error> {
            let mut flags = Flags::default();
            let mut parser = Parser {
                chars: pattern.chars().collect(),
                pos: 0,
                groups: 0,
                names: Vec::new(),
                flags: &mut flags,
            };
            let root = parser.alt()?;
            if parser.pos < parser.chars.len() {
                return perr(format!("unbalanced parenthesis at position {}", parser.pos));
            }
            let (groups, names) = (parser.groups, parser.names);
            Ok(Self {
                root,
                groups,
                names,
                flags,
            })
        }

        /// `(?i)` + `re.escape(text)`: the text itself, matched without regard to case.
        pub fn literal(text: &str, icase: bool) -> Self {
            Self {
                root: Node::Concat(text.chars().map(Node::Char).collect()),
                groups: 0,
                names: Vec::new(),
                flags: Flags {
                    icase,
                    ..Flags::default()
                },
            }
        }

        /// Parses a `re.sub` replacement template.
        fn template(&self, repl: &str) -> Result<Vec<Piece>, Error> {
            let chars: Vec<char> = repl.chars().collect();
            let mut pieces = Vec::new();
            let mut literal = String::new();
            let mut i = 0;
            let group_ref = |n: usize, at: usize| {
                if n > self.groups {
                    perr(format!("invalid group reference {n} at position {at}"))
                } else {
                    Ok(n)
                }
            };
            while i < chars.len() {
                let c = chars[i];
                if c != '\\' {
                    literal.push(c);
                    i += 1;
                    continue;
                }
                let at = i;
                let Some(&e) = chars.get(i + 1) else {
                    return perr(format!("bad escape (end of pattern) at position {at}"));
                };
                i += 2;
                let simple = match e {
                    'a' => Some('\x07'),
                    'f' => Some('\x0c'),
                    'n' => Some('\n'),
                    'r' => Some('\r'),
                    't' => Some('\t'),
                    'v' => Some('\x0b'),
                    'b' => Some('\x08'),
                    '\\' => Some('\\'),
                    _ => None,
                };
                if let Some(s) = simple {
                    literal.push(s);
                    continue;
                }
                let group = match e {
                    'g' => {
                        if chars.get(i) != Some(&'<') {
                            return perr(format!("missing < at position {i}"));
                        }
                        let from = i + 1;
                        let Some(len) = chars[from..].iter().position(|c| *c == '>') else {
                            return perr(format!(
                                "missing >, unterminated name at position {from}"
                            ));
                        };
                        let name: String = chars[from..from + len].iter().collect();
                        i = from + len + 1;
                        if let Ok(n) = name.parse::<usize>() {
                            group_ref(n, from)?
                        } else if let Some((_, idx)) = self.names.iter().find(|(k, _)| *k == name) {
                            *idx
                        } else if name.is_empty() {
                            return perr(format!("missing group name at position {from}"));
                        } else {
                            return Err(Error::Pattern(format!("unknown group name '{name}'")));
                        }
                    }
                    '0' => {
                        let mut value = 0;
                        let mut taken = 0;
                        while taken < 2 {
                            match chars.get(i).and_then(|c| c.to_digit(8)) {
                                Some(d) => {
                                    value = value * 8 + d;
                                    i += 1;
                                    taken += 1;
                                }
                                None => break,
                            }
                        }
                        literal.push(char::from_u32(value).unwrap_or('\0'));
                        continue;
                    }
                    '1'..='9' => {
                        let mut n = e.to_digit(10).unwrap_or(0) as usize;
                        if let Some(d) = chars.get(i).and_then(|c| c.to_digit(10)) {
                            let third = chars.get(i + 1).and_then(|c| c.to_digit(8));
                            if e <= '7' && d < 8 && third.is_some() {
                                let v =
                                    (e.to_digit(8).unwrap_or(0) * 8 + d) * 8 + third.unwrap_or(0);
                                if v > 0o377 {
                                    return perr(format!(
                                        "octal escape value \\{e}{d}{} outside of range 0-0o377 at position {at}",
                                        third.unwrap_or(0)
                                    ));
                                }
                                literal.push(char::from_u32(v).unwrap_or('\0'));
                                i += 2;
                                continue;
                            }
                            n = n * 10 + d as usize;
                            i += 1;
                        }
                        group_ref(n, at + 1)?
                    }
                    e if e.is_ascii_alphanumeric() => {
                        return perr(format!("bad escape \\{e} at position {at}"));
                    }
                    e => {
                        // Unknown escapes of other characters stay as written.
                        literal.push('\\');
                        literal.push(e);
                        continue;
                    }
                };
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Group(group));
            }
            if !literal.is_empty() {
                pieces.push(Piece::Text(literal));
            }
            Ok(pieces)
        }

        /// The first match at or after `from`; with `advance`, one that is empty at `from`
        /// does not count.
        fn search(
            &self,
            m: &mut Matcher<'_>,
            from: usize,
            advance: bool,
        ) -> Result<Option<(usize, usize)>, Error> {
            for start in from..=m.text.len() {
                m.caps = vec![None; self.groups + 1];
                m.depth = 0;
                let mut end = None;
                let must_move = advance && start == from;
                let found = m.m(&self.root, start, &mut |_, j| {
                    if must_move && j == start {
                        return false;
                    }
                    end = Some(j);
                    true
                });
                if m.failed {
                    return Err(Error::TooComplex);
                }
                if found {
                    let end = end.unwrap_or(start);
                    m.caps[0] = Some((start, end));
                    return Ok(Some((start, end)));
                }
            }
            Ok(None)
        }

        /// `re.sub(pattern, repl, text)`: every non-overlapping match replaced.
        pub fn sub(&self, repl: &str, text: &str) -> Result<String, Error> {
            let pieces = self.template(repl)?;
            let chars: Vec<char> = text.chars().collect();
            let mut m = Matcher {
                text: &chars,
                caps: Vec::new(),
                flags: self.flags,
                steps: 0,
                depth: 0,
                failed: false,
            };
            let mut out = String::new();
            let (mut pos, mut last, mut advance) = (0, 0, false);
            while pos <= chars.len() {
                let Some((start, end)) = self.search(&mut m, pos, advance)? else {
                    break;
                };
                out.extend(&chars[last..start]);
                for piece in &pieces {
                    match piece {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Group(g) => {
                            if let Some((s, e)) = m.caps.get(*g).copied().flatten() {
                                out.extend(&chars[s..e]);
                            }
                        }
                    }
                }
                last = end;
                advance = start == end;
                pos = end;
            }
            out.extend(&chars[last..]);
            Ok(out)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn sub(pattern: &str, repl: &str, text: &str) -> String {
            match Regex::new(pattern).and_then(|r| r.sub(repl, text)) {
                Ok(s) => s,
                Err(Error::Pattern(msg)) => format!("error: {msg}"),
                Err(Error::TooComplex) => "too complex".into(),
            }
        }

        #[test]
        fn substitutions_follow_python() {
            assert_eq!(sub("x*", "-", "abxd"), "-a-b--d-");
            assert_eq!(sub(r"(\w+) (\w+)", r"\2 \1", "hello world"), "world hello");
            assert_eq!(sub(r"(?P<w>o)", r"[\g<w>]", "foo"), "f[o][o]");
            assert_eq!(sub(r"a|b", "", "cabbage"), "cge");
            assert_eq!(sub(r"\d{2,3}", "#", "1 22 333 4444"), "1 # # #4");
            assert_eq!(sub(r"<.*?>", "", "<a>x<b>y"), "xy");
            assert_eq!(sub(r"<.*>", "", "<a>x<b>y"), "y");
            assert_eq!(sub(r"(?i)CAT", "dog", "Cat cAt"), "dog dog");
            assert_eq!(sub(r"^a", "b", "aaa"), "baa");
            assert_eq!(sub(r"a$", "b", "aaa\n"), "aab\n");
            assert_eq!(sub(r"\bcat\b", "dog", "cat concat cat"), "dog concat dog");
            assert_eq!(sub(r"[^a-c]", "", "abcdefcba"), "abccba");
            assert_eq!(sub(r"(a)(?=b)", "X", "ab ac"), "Xb ac");
            assert_eq!(sub(r"(?<!x)y", "Z", "xy y"), "xy Z");
            assert_eq!(sub(r"(o)\1", "0", "foo bo"), "f0 bo");
            assert_eq!(sub(r"(a)|b", r"[\1]", "ab"), "[a][]");
            assert_eq!(sub("a", r"\n", "a"), "\n");
            assert_eq!(sub("a", r"\.", "a"), "\\.");
            assert_eq!(sub("", "-", "ab"), "-a-b-");
        }

        #[test]
        fn errors_follow_python() {
            assert_eq!(
                sub("(a", "", "a"),
                "error: missing ), unterminated subpattern at position 0"
            );
            assert_eq!(
                sub("a)", "", "a"),
                "error: unbalanced parenthesis at position 1"
            );
            assert_eq!(sub("*a", "", "a"), "error: nothing to repeat at position 0");
            assert_eq!(sub("a**", "", "a"), "error: multiple repeat at position 2");
            assert_eq!(
                sub("[a", "", "a"),
                "error: unterminated character set at position 0"
            );
            assert_eq!(
                sub("[z-a]", "", "a"),
                "error: bad character range z-a at position 1"
            );
            assert_eq!(sub(r"\q", "", "a"), r"error: bad escape \q at position 0");
            assert_eq!(
                sub("a", r"\1", "a"),
                "error: invalid group reference 1 at position 1"
            );
            assert_eq!(sub("a", r"\q", "a"), r"error: bad escape \q at position 0");
            assert_eq!(sub("(a*)*b", "", &"a".repeat(40)), "too complex");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_split_follows_the_reference() {
        assert_eq!(
            split_negative("a cat [blurry] dog"),
            ("a cat  dog".to_owned(), " blurry".to_owned())
        );
        assert_eq!(
            split_negative(r"keep \[this] [x[y]z]"),
            (r"keep \[this xz".to_owned(), "  y".to_owned())
        );
    }
}
