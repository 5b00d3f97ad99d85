//! YAML as hostile input: the checks that run before libyaml reads a text, and
//! the one way sidemount turns YAML into a value, with its cost bounded.
//!
//! Two costs of a YAML text are not linear in its size, and both are bounded here:
//!
//! - libyaml's scanner rechecks the pending simple key of every open flow
//!   collection (`[`, `{`) at every token, so a text nested N flow levels deep
//!   costs O(size × N): 100 KB of `volumes: [[[…` took 28 s. [`scan`] measures
//!   the nesting first, in one pass that follows libyaml's own rules for where
//!   a token starts (quotes, comments, plain and block scalars, tags, the pairs
//!   of a flow sequence), so a bracket inside a string or a comment never
//!   counts and one that opens a collection always does; a text nested past
//!   the limit is refused before libyaml sees it.
//! - Aliases (`*name`) repeat what their anchor holds, so a few hundred bytes can
//!   stand for billions of values. The value is built by a visitor that counts
//!   every value it is handed, aliases expanded, and stops at a budget.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize as _;
use serde_json::{Map, Number, Value};

/// What a text may cost. Each limit is checked before the work it bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes of text; `None` for a file the user hands to a command
    /// of their own (the scan and the parse are linear once nesting is bounded).
    pub max_bytes: Option<usize>,
    /// The deepest nesting of collections, block and flow together.
    pub max_depth: usize,
    /// The most `[` and `{` characters in the whole text, strings included: a
    /// bound on the scanner's cost that does not rest on [`scan`] being right.
    pub max_brackets: Option<usize>,
    /// The most values (scalars, lists, maps and keys) the text may expand to,
    /// aliases included.
    pub max_values: usize,
    /// Refuse a map that gives one key twice (a spec), rather than keep the last
    /// (a Kubernetes object, as `sidemount inject` always has).
    pub unique_keys: bool,
}

/// Why a text was not read: the limits first, each naming its figure. Each
/// message completes a sentence about the text: "the spec {error}".
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("is {bytes} bytes, above the limit of {limit} bytes: split it, or shorten it")]
    TooLarge { bytes: usize, limit: usize },
    #[error("nests lists and maps more than {limit} levels deep (line {line}, column {column}): flatten it")]
    TooDeep { limit: usize, line: usize, column: usize },
    #[error(
        "holds more than {limit} `[` and `{{` characters (strings included): split it, or write it in block style"
    )]
    TooManyBrackets { limit: usize },
    #[error("has aliases (*name) that expand to more than {limit} values: write the values out, or alias less")]
    TooManyValues { limit: usize },
    #[error("has a YAML tag ({tag}) at line {line}, column {column}, which sidemount does not read: remove it")]
    Tagged { tag: String, line: usize, column: usize },
    #[error("is not valid YAML: {0}")]
    Syntax(#[source] serde_yaml_ng::Error),
}

/// The UTF-8 byte order mark, which a text may start with.
pub const BOM: char = '\u{feff}';

/// Reads one YAML (or JSON) document into a value within `limits`: the size,
/// the nesting and the bracket count are checked before parsing, the expansion
/// of aliases while the value is built. A leading byte order mark is dropped.
pub fn parse(text: &str, limits: &Limits) -> Result<Value, YamlError> {
    check(text, limits)?;
    let text = text.strip_prefix(BOM).unwrap_or(text);
    let budget = Budget { left: Cell::new(limits.max_values), exceeded: Cell::new(false), unique: limits.unique_keys };
    let tagged = Cell::new(false);
    let result = AnyValue { budget: &budget, tagged: &tagged }.deserialize(serde_yaml_ng::Deserializer::from_str(text));
    match result {
        Ok(value) => Ok(value),
        Err(_) if budget.exceeded.get() => Err(YamlError::TooManyValues { limit: limits.max_values }),
        // serde_yaml_ng's own bound on alias expansion: it counts jumps, not values.
        Err(err) if err.to_string().starts_with("repetition limit exceeded") => {
            Err(YamlError::TooManyValues { limit: limits.max_values })
        }
        Err(err) if tagged.get() => {
            let (line, column) = err.location().map_or((0, 0), |l| (l.line(), l.column()));
            let tag = err.to_string().split('`').nth(1).unwrap_or_default().trim_start_matches('!').to_string();
            let tag = format!("!{tag}");
            Err(YamlError::Tagged { tag, line, column })
        }
        Err(err) => Err(YamlError::Syntax(err)),
    }
}

/// The checks that run before the parse: size, nesting, bracket count. Each is
/// linear in the size, and the scan stops where the nesting passes the limit.
pub fn check(text: &str, limits: &Limits) -> Result<(), YamlError> {
    if let Some(limit) = limits.max_bytes {
        if text.len() > limit {
            return Err(YamlError::TooLarge { bytes: text.len(), limit });
        }
    }
    if let Some(at) = scan(text, limits.max_depth).too_deep {
        return Err(YamlError::TooDeep { limit: limits.max_depth, line: at.line + 1, column: at.column + 1 });
    }
    if let Some(limit) = limits.max_brackets {
        if text.bytes().filter(|b| matches!(b, b'[' | b'{')).count() > limit {
            return Err(YamlError::TooManyBrackets { limit });
        }
    }
    Ok(())
}

/// What [`scan`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// The deepest nesting of collections, block and flow together (up to where the scan stopped).
    pub depth: usize,
    /// The deepest flow nesting: what libyaml's scanner pays for at every token.
    pub flow_depth: usize,
    /// Where the nesting first went past the limit given to [`scan`] (0-based); the scan stops there.
    pub too_deep: Option<Position>,
}

/// A place in a text, 0-based, the column in characters (as libyaml counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Measures how deep a text nests without parsing it, in one linear pass.
///
/// It follows libyaml's scanner (`yaml_parser_fetch_next_token` and the scanners
/// it calls), keeping only what decides where a token starts and ends: the flow
/// level, the block indentation stack (a plain scalar continues on a line
/// indented past it; a block scalar's lines are those indented to its level),
/// and the one pending simple key of the block context (a `key:` opens a
/// mapping at the key's column). Where libyaml would stop with an error the
/// scan goes on, so it never counts less than libyaml reaches.
pub fn scan(text: &str, limit: usize) -> Shape {
    let mut scanner = Scanner::new(text.as_bytes(), limit);
    scanner.run();
    scanner.shape
}

/// A simple key: a token that may turn out to be a mapping key when a `:` follows
/// on the same line.
#[derive(Debug, Clone, Copy)]
struct Key {
    line: usize,
    column: usize,
    index: usize,
    /// The deepest nesting reached inside the key (`[a, b]: c`): it ends up inside the mapping.
    deepest: usize,
}

/// One open flow collection.
#[derive(Debug, Clone, Copy)]
struct Flow {
    sequence: bool,
    /// `[a: b]` is `[{a: b}]`: a `:` in a sequence's entry opens a mapping of one pair.
    pair: bool,
    /// The deepest nesting reached in the current entry, for a key that turns out to be one.
    deepest: usize,
}

/// One level of libyaml's indentation stack.
#[derive(Debug, Clone, Copy)]
struct Level {
    /// The indentation below this level (libyaml pushes the old one).
    outer: isize,
    mapping: bool,
    /// A block sequence at the mapping's own column (`key:\n- item`), which
    /// libyaml nests without a level of its own.
    indentless: bool,
}

struct Scanner<'a> {
    text: &'a [u8],
    /// Byte offset, as libyaml's `mark.index`.
    index: usize,
    line: usize,
    /// In characters, as libyaml's `mark.column`.
    column: usize,
    flow: usize,
    flows: Vec<Flow>,
    /// How many open flow sequences hold a pair's mapping.
    pairs: usize,
    indent: isize,
    levels: Vec<Level>,
    key_allowed: bool,
    /// The block context's pending simple key (flow level 0).
    key: Option<Key>,
    limit: usize,
    shape: Shape,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a [u8], limit: usize) -> Scanner<'a> {
        Scanner {
            text,
            index: 0,
            line: 0,
            column: 0,
            flow: 0,
            flows: Vec::new(),
            pairs: 0,
            indent: -1,
            levels: Vec::new(),
            key_allowed: true,
            key: None,
            limit,
            shape: Shape::default(),
        }
    }

    fn at(&self, offset: usize) -> Option<u8> {
        self.text.get(self.index + offset).copied()
    }

    fn is(&self, offset: usize, byte: u8) -> bool {
        self.at(offset) == Some(byte)
    }

    fn eof(&self) -> bool {
        self.index >= self.text.len()
    }

    /// The width in bytes of the line break at `offset`, if one is there
    /// (CR LF counts as one break).
    fn break_at(&self, offset: usize) -> Option<usize> {
        match (self.at(offset), self.at(offset + 1), self.at(offset + 2)) {
            (Some(b'\r'), Some(b'\n'), _) => Some(2),
            (Some(b'\r' | b'\n'), _, _) => Some(1),
            (Some(0xC2), Some(0x85), _) => Some(2),
            (Some(0xE2), Some(0x80), Some(0xA8 | 0xA9)) => Some(3),
            _ => None,
        }
    }

    fn is_break(&self, offset: usize) -> bool {
        self.break_at(offset).is_some()
    }

    fn is_blank(&self, offset: usize) -> bool {
        matches!(self.at(offset), Some(b' ' | b'\t'))
    }

    /// Blank, break or the end of the text.
    fn is_blankz(&self, offset: usize) -> bool {
        self.is_blank(offset) || self.is_break(offset) || self.index + offset >= self.text.len()
    }

    /// Skips one character (not a line break).
    fn skip(&mut self) {
        let width = match self.at(0) {
            Some(b) if b < 0x80 => 1,
            Some(b) if b & 0xE0 == 0xC0 => 2,
            Some(b) if b & 0xF0 == 0xE0 => 3,
            Some(_) => 4,
            None => return,
        };
        self.index = (self.index + width).min(self.text.len());
        self.column += 1;
    }

    /// Skips one line break, or one character if there is none.
    fn skip_line(&mut self) {
        match self.break_at(0) {
            Some(width) => {
                self.index += width;
                self.column = 0;
                self.line += 1;
            }
            None => self.skip(),
        }
    }

    fn skip_to_break(&mut self) {
        while !self.eof() && !self.is_break(0) {
            self.skip();
        }
    }

    fn depth(&self) -> usize {
        self.levels.len() + self.levels.iter().filter(|l| l.indentless).count() + self.flow + self.pairs
    }

    /// Records the nesting after it grew at `at`; false once it is past the limit.
    fn grew(&mut self, at: Position) -> bool {
        self.grew_to(self.depth(), at)
    }

    /// Records that the nesting reached `depth` at `at`; false once it is past the limit.
    fn grew_to(&mut self, depth: usize, at: Position) -> bool {
        if let Some(flow) = self.flows.last_mut() {
            flow.deepest = flow.deepest.max(depth);
        }
        if let Some(key) = self.key.as_mut() {
            key.deepest = key.deepest.max(depth);
        }
        self.shape.depth = self.shape.depth.max(depth);
        self.shape.flow_depth = self.shape.flow_depth.max(self.flow);
        if depth > self.limit {
            self.shape.too_deep = Some(at);
            return false;
        }
        true
    }

    fn here(&self) -> Position {
        Position { line: self.line, column: self.column }
    }

    fn run(&mut self) {
        loop {
            self.skip_to_token();
            if self.eof() {
                return;
            }
            // A simple key lives on one line, for at most 1024 bytes.
            if self.key.is_some_and(|k| k.line < self.line || k.index + 1024 < self.index) {
                self.key = None;
            }
            self.unroll(self.column as isize);
            let at = self.here();
            let c = self.at(0).unwrap_or(0);
            if self.flow == 0 && self.column as isize == self.indent && !(c == b'-' && self.is_blankz(1)) {
                if let Some(level) = self.levels.last_mut() {
                    level.indentless = false;
                }
            }
            if self.column == 0 && c == b'%' {
                self.unroll(-1);
                self.remove_key();
                self.key_allowed = false;
                self.skip_to_break();
                self.skip_line();
                continue;
            }
            if self.column == 0
                && (self.text[self.index..].starts_with(b"---") || self.text[self.index..].starts_with(b"..."))
                && self.is_blankz(3)
            {
                self.unroll(-1);
                self.remove_key();
                self.key_allowed = false;
                (0..3).for_each(|_| self.skip());
                continue;
            }
            let next_blankz = self.is_blankz(1);
            let grown = match c {
                b'[' | b'{' => {
                    self.save_key();
                    self.flow += 1;
                    self.flows.push(Flow { sequence: c == b'[', pair: false, deepest: 0 });
                    self.key_allowed = true;
                    self.skip();
                    self.grew(at)
                }
                b']' | b'}' => {
                    self.remove_key();
                    if let Some(closed) = self.flows.pop() {
                        self.flow -= 1;
                        self.pairs -= usize::from(closed.pair);
                        if let Some(outer) = self.flows.last_mut() {
                            outer.deepest = outer.deepest.max(closed.deepest);
                        }
                    }
                    self.key_allowed = false;
                    self.skip();
                    true
                }
                b',' => {
                    self.remove_key();
                    self.end_pair();
                    self.key_allowed = true;
                    self.skip();
                    true
                }
                b'-' if next_blankz => {
                    let grown = self.roll(self.column as isize, false, at);
                    self.remove_key();
                    self.key_allowed = true;
                    self.skip();
                    grown
                }
                b'?' if self.flow > 0 || next_blankz => {
                    let grown = self.roll(self.column as isize, true, at) && self.open_pair(at);
                    self.remove_key();
                    self.key_allowed = self.flow == 0;
                    self.skip();
                    grown
                }
                b':' if self.flow > 0 || next_blankz => {
                    let grown = if self.flow > 0 {
                        // Whether or not a key was pending, no key may follow on this level.
                        self.key_allowed = false;
                        self.open_pair(at)
                    } else if let Some(key) = self.key.take() {
                        self.key_allowed = false;
                        let at = Position { line: key.line, column: key.column };
                        let outer = self.levels.len();
                        // A collection as the key of a new mapping sits inside it.
                        self.roll(key.column as isize, true, at)
                            && (self.levels.len() == outer || key.deepest == 0 || self.grew_to(key.deepest + 1, at))
                    } else {
                        self.key_allowed = true;
                        self.roll(self.column as isize, true, at)
                    };
                    self.skip();
                    grown
                }
                b'*' | b'&' => {
                    self.save_key();
                    self.key_allowed = false;
                    self.skip();
                    while self.at(0).is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                        self.skip();
                    }
                    true
                }
                b'!' => {
                    self.save_key();
                    self.key_allowed = false;
                    self.tag();
                    true
                }
                b'|' | b'>' if self.flow == 0 => {
                    self.remove_key();
                    self.key_allowed = true;
                    self.block_scalar();
                    true
                }
                b'\'' | b'"' => {
                    self.save_key();
                    self.key_allowed = false;
                    self.quoted(c == b'\'');
                    true
                }
                _ if self.starts_plain() => {
                    self.save_key();
                    self.key_allowed = false;
                    self.plain();
                    true
                }
                // No token starts here: libyaml stops with an error. Go on anyway.
                _ => {
                    self.skip();
                    true
                }
            };
            if !grown {
                return;
            }
        }
    }

    /// `yaml_parser_scan_to_next_token`: blanks, comments and line breaks.
    fn skip_to_token(&mut self) {
        loop {
            if self.column == 0 && self.text[self.index..].starts_with("\u{feff}".as_bytes()) {
                self.skip();
            }
            while self.is(0, b' ') || (self.is(0, b'\t') && (self.flow > 0 || !self.key_allowed)) {
                self.skip();
            }
            if self.is(0, b'#') {
                self.skip_to_break();
            }
            if !self.is_break(0) {
                return;
            }
            self.skip_line();
            if self.flow == 0 {
                self.key_allowed = true;
            }
        }
    }

    fn save_key(&mut self) {
        if self.flow == 0 && self.key_allowed {
            self.key = Some(Key { line: self.line, column: self.column, index: self.index, deepest: 0 });
        }
    }

    /// A `:` or `?` in a flow sequence's entry opens the mapping of one pair
    /// (libyaml's parser makes it of the KEY token); what the entry held so far is its key.
    fn open_pair(&mut self, at: Position) -> bool {
        let Some(flow) = self.flows.last_mut().filter(|f| f.sequence && !f.pair) else { return true };
        flow.pair = true;
        let key = flow.deepest;
        self.pairs += 1;
        let depth = self.depth().max(key + 1);
        self.grew_to(depth, at)
    }

    /// A `,` ends a flow collection's entry, and the mapping of a pair with it.
    fn end_pair(&mut self) {
        if let Some(flow) = self.flows.last_mut() {
            if flow.pair {
                flow.pair = false;
                self.pairs -= 1;
            }
        }
        let depth = self.depth();
        if let Some(flow) = self.flows.last_mut() {
            flow.deepest = depth;
        }
    }

    /// Only the block context's key is kept; a flow level's key never moves the indentation.
    fn remove_key(&mut self) {
        if self.flow == 0 {
            self.key = None;
        }
    }

    /// `yaml_parser_roll_indent`: a block collection opens at `column`.
    fn roll(&mut self, column: isize, mapping: bool, at: Position) -> bool {
        if self.flow > 0 {
            return true;
        }
        if self.indent < column {
            self.levels.push(Level { outer: self.indent, mapping, indentless: false });
            self.indent = column;
            return self.grew(at);
        }
        if !mapping && self.indent == column {
            if let Some(level) = self.levels.last_mut().filter(|l| l.mapping && !l.indentless) {
                level.indentless = true;
                return self.grew(at);
            }
        }
        true
    }

    /// `yaml_parser_unroll_indent`: block collections close left of `column`.
    fn unroll(&mut self, column: isize) {
        if self.flow > 0 {
            return;
        }
        while self.indent > column {
            match self.levels.pop() {
                Some(level) => self.indent = level.outer,
                None => self.indent = -1,
            }
        }
    }

    /// `yaml_parser_starts_plain`: the test libyaml makes last, after every indicator.
    fn starts_plain(&self) -> bool {
        let c = self.at(0).unwrap_or(0);
        let indicator = b"-?:,[]{}#&*!|>'\"%@`".contains(&c);
        !(self.is_blankz(0) || indicator)
            || (c == b'-' && !self.is_blank(1))
            || (self.flow == 0 && (c == b'?' || c == b':') && !self.is_blankz(1))
    }

    fn document_indicator(&self) -> bool {
        self.column == 0
            && (self.text[self.index..].starts_with(b"---") || self.text[self.index..].starts_with(b"..."))
            && self.is_blankz(3)
    }

    /// `yaml_parser_scan_plain_scalar`.
    fn plain(&mut self) {
        let indent = self.indent + 1;
        let mut leading_blanks = false;
        loop {
            if self.document_indicator() || self.is(0, b'#') {
                break;
            }
            while !self.is_blankz(0) {
                let c = self.at(0).unwrap_or(0);
                if c == b':'
                    && (self.is_blankz(1) || (self.flow > 0 && self.at(1).is_some_and(|n| b",?[]{}".contains(&n))))
                {
                    // `: ` ends the scalar; in a flow, `:,` is an error where libyaml stops.
                    break;
                }
                if self.flow > 0 && b",[]{}".contains(&c) {
                    break;
                }
                self.skip();
            }
            if !(self.is_blank(0) || self.is_break(0)) {
                break;
            }
            while self.is_blank(0) || self.is_break(0) {
                if self.is_blank(0) {
                    self.skip();
                } else {
                    self.skip_line();
                    leading_blanks = true;
                }
            }
            if self.flow == 0 && (self.column as isize) < indent {
                break;
            }
        }
        if leading_blanks {
            self.key_allowed = true;
        }
    }

    /// `yaml_parser_scan_flow_scalar`: to the closing quote; `''` and `\"` escape it.
    fn quoted(&mut self, single: bool) {
        let quote = if single { b'\'' } else { b'"' };
        self.skip();
        while !self.eof() {
            if single && self.is(0, b'\'') && self.is(1, b'\'') {
                self.skip();
                self.skip();
            } else if self.is(0, quote) {
                self.skip();
                return;
            } else if !single && self.is(0, b'\\') {
                self.skip();
                self.skip_line();
            } else {
                self.skip_line();
            }
        }
    }

    /// `yaml_parser_scan_tag`: `!<uri>`, or a handle and a suffix.
    fn tag(&mut self) {
        let uri = |b: u8, brackets: bool| {
            b.is_ascii_alphanumeric() || b"_-;/?:@&=+$.%!~*'()".contains(&b) || (brackets && b",[]".contains(&b))
        };
        if self.is(1, b'<') {
            self.skip();
            self.skip();
            while self.at(0).is_some_and(|b| uri(b, true)) {
                self.skip();
            }
            if self.is(0, b'>') {
                self.skip();
            }
            return;
        }
        self.skip();
        while self.at(0).is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            self.skip();
        }
        if self.is(0, b'!') {
            self.skip();
        }
        while self.at(0).is_some_and(|b| uri(b, false)) {
            self.skip();
        }
    }

    /// `yaml_parser_scan_block_scalar`: the header, then every line indented to
    /// the scalar's level (given by the header, or by its first non-empty line).
    fn block_scalar(&mut self) {
        self.skip();
        let mut increment: isize = 0;
        let digit = |b: Option<u8>| b.filter(|b| (b'1'..=b'9').contains(b)).map(|b| (b - b'0') as isize);
        if matches!(self.at(0), Some(b'+' | b'-')) {
            self.skip();
            if let Some(d) = digit(self.at(0)) {
                increment = d;
                self.skip();
            }
        } else if let Some(d) = digit(self.at(0)) {
            increment = d;
            self.skip();
            if matches!(self.at(0), Some(b'+' | b'-')) {
                self.skip();
            }
        }
        while self.is_blank(0) {
            self.skip();
        }
        if self.is(0, b'#') {
            self.skip_to_break();
        }
        if self.is_break(0) {
            self.skip_line();
        }
        let mut indent = if increment > 0 {
            if self.indent >= 0 {
                self.indent + increment
            } else {
                increment
            }
        } else {
            0
        };
        self.block_breaks(&mut indent);
        while self.column as isize == indent && !self.eof() {
            self.skip_to_break();
            self.skip_line();
            self.block_breaks(&mut indent);
        }
    }

    /// `yaml_parser_scan_block_scalar_breaks`: empty lines and indentation.
    fn block_breaks(&mut self, indent: &mut isize) {
        let mut max_indent: isize = 0;
        loop {
            while (*indent == 0 || (self.column as isize) < *indent) && self.is(0, b' ') {
                self.skip();
            }
            max_indent = max_indent.max(self.column as isize);
            if (*indent == 0 || (self.column as isize) < *indent) && self.is(0, b'\t') {
                // libyaml stops: a tab where indentation is expected.
                break;
            }
            if !self.is_break(0) {
                break;
            }
            self.skip_line();
        }
        if *indent == 0 {
            *indent = max_indent.max(self.indent + 1).max(1);
        }
    }
}

/// How many values a parse may still build; set when it ran out.
struct Budget {
    left: Cell<usize>,
    exceeded: Cell<bool>,
    unique: bool,
}

impl Budget {
    fn take<E: de::Error>(&self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.exceeded.set(true);
                Err(E::custom("too many values"))
            }
        }
    }
}

/// Any value, counted against the budget. serde_yaml_ng hands an alias's
/// anchored value again at each use, so the count covers the expansion.
#[derive(Clone, Copy)]
struct AnyValue<'b> {
    budget: &'b Budget,
    tagged: &'b Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for AnyValue<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AnyValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.budget.take()?;
        // As serde_json reads YAML: a float JSON cannot hold (.inf, .nan) is null.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.budget.take()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.budget.take()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key_seed(KeyText(self.budget))? {
            let value = map.next_value_seed(self)?;
            if object.insert(key.clone(), value).is_some() && self.budget.unique {
                return Err(de::Error::custom(format_args!("the key {key:?} is given twice: keep one")));
            }
        }
        Ok(Value::Object(object))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        // serde_yaml_ng hands a value with a tag it does not resolve (`!foo x`) as an enum.
        self.tagged.set(true);
        let (tag, _): (String, _) = data.variant()?;
        Err(de::Error::custom(format_args!("`{tag}`")))
    }
}

/// A mapping key, read as text: serde_yaml_ng gives a scalar key's text as it
/// is written (`1`, `true`, `~`), and refuses a collection as a key.
struct KeyText<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for KeyText<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        self.0.take()?;
        String::deserialize(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(depth: usize) -> Limits {
        Limits { max_bytes: None, max_depth: depth, max_brackets: None, max_values: 1 << 20, unique_keys: true }
    }

    /// The depth of a parsed value: every list and map is a level.
    fn value_depth(value: &serde_yaml_ng::Value) -> usize {
        match value {
            serde_yaml_ng::Value::Sequence(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
            serde_yaml_ng::Value::Mapping(map) => {
                1 + map.iter().map(|(k, v)| value_depth(k).max(value_depth(v))).max().unwrap_or(0)
            }
            serde_yaml_ng::Value::Tagged(tagged) => value_depth(&tagged.value),
            _ => 0,
        }
    }

    /// The scan's depth is the parsed depth, for texts libyaml reads.
    #[track_caller]
    fn same_depth(text: &str) {
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(scan(text, usize::MAX).depth, value_depth(&parsed), "{text:?}");
    }

    #[test]
    fn counts_what_libyaml_nests() {
        same_depth("a: b\n");
        same_depth("volumes:\n- name: a\n  command: [x, \"{mountpoint}\"]\n  env: {A: b}\n");
        same_depth("- - - x\n");
        same_depth("a:\n- b\n- c: [d, {e: f}]\n");
        same_depth("[[[[a]]], {b: [c]}]");
        same_depth("{\"a\": [1, {\"b\": [2, 3]}], \"c\": {}}");
        same_depth("? [a, b]\n: c\n");
        same_depth("[a, [b]]: c\n");
        same_depth("{a: [b]}: c\nd: e\n");
        // A pair in a flow sequence is a mapping of its own (found by fuzzing).
        same_depth("volumes:\n- type: fuse\n  command: [bindfs, -f, /srpe: fuse\n  comman]\n");
        same_depth("[a: b, c, [d]: e, [f: [g: h]], ? i : j]");
        same_depth("{a: [b: c]}");
        same_depth("[a: b]: c\n");
        same_depth("a:\n  b:\n    c:\n      - d\n");
        same_depth("- a: 1\n  b:\n  - 2\n- c\n");
        same_depth("%YAML 1.2\n---\na: [b]\n...\n");
    }

    #[test]
    fn brackets_inside_scalars_and_comments_are_not_collections() {
        for text in [
            "a: \"[[[[\"\n",
            "a: '[[[[ it''s'\n",
            "a: x [[[[\n",
            "a: x\n  [[[[ y\n",
            "a: | \n  [[[[\n  {{{{\n",
            "a: >-\n  [[[[\n\n  ]]]]\nb: c\n",
            "a: b # [[[[\n",
            "# [[[[\na: b\n",
            "[a, \"]]]]\", '}}}}', b]",
            "[\"a\\\"]]]\", b]",
            "a: !<tag:x,[[[[]> b\n",
            "- x [y] {z}\n",
            "a: b: c\n",
        ] {
            let shape = scan(text, usize::MAX);
            assert!(shape.depth <= 2 && shape.flow_depth <= 1, "{text:?}: {shape:?}");
        }
        same_depth("a: \"[[[[\"\nb: [c]\n");
        same_depth("a: |\n  [[[[\nb: [c]\n");
        same_depth("a: x\n  [[[[ y\nb: [c]\n");
    }

    #[test]
    fn a_closing_bracket_inside_a_string_closes_nothing() {
        // Were the quoted `]` counted, the depth would look like 2 while libyaml nests 4.
        let text = "a: [[ \"]]\", [[ x ]] ]]\n";
        let shape = scan(text, usize::MAX);
        assert_eq!(shape.flow_depth, 4, "{shape:?}");
        same_depth(text);
        let text = "a: [[ '''' , ']]', [[ x ]] ]]\n";
        assert_eq!(scan(text, usize::MAX).flow_depth, 4);
    }

    #[test]
    fn stops_at_the_limit_and_says_where() {
        let text = format!("volumes: {}", "[".repeat(100));
        let shape = scan(&text, 32);
        assert_eq!(shape.too_deep, Some(Position { line: 0, column: 9 + 31 }));
        match check(&text, &limits(32)) {
            Err(YamlError::TooDeep { limit: 32, line: 1, column: 41 }) => {}
            other => panic!("{other:?}"),
        }
        let block: String = (0..40).map(|i| format!("{}- \n", " ".repeat(i * 2))).collect();
        assert!(matches!(check(&block, &limits(32)), Err(YamlError::TooDeep { .. })));
        assert!(check(&block, &limits(40)).is_ok());
    }

    #[test]
    fn parses_yaml_and_json_into_json_values() {
        let value = parse("a: [1, x, true, ~, 1.5]\nb: {c: d}\n", &limits(8)).unwrap();
        assert_eq!(value, serde_json::json!({ "a": [1, "x", true, null, 1.5], "b": { "c": "d" } }));
        assert_eq!(parse("{\"a\": [1]}", &limits(8)).unwrap(), serde_json::json!({ "a": [1] }));
        assert_eq!(parse("", &limits(8)).unwrap(), Value::Null);
        assert_eq!(parse("\u{feff}---\na: 1\n", &limits(8)).unwrap(), serde_json::json!({ "a": 1 }));
    }

    #[test]
    fn bounds_alias_expansion() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let mut small = limits(8);
        small.max_values = 10_000;
        let started = crate::sys::ThreadCpuTime::now();
        assert!(matches!(parse(&bomb, &small), Err(YamlError::TooManyValues { limit: 10_000 })));
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        // One big list aliased many times: few jumps, many values.
        let big = format!("a: &a [{}]\nb: [{}]\n", vec!["x"; 2000].join(","), vec!["*a"; 2000].join(","));
        assert!(matches!(parse(&big, &small), Err(YamlError::TooManyValues { .. })));
        assert_eq!(parse("a: &x 1\nb: *x\n", &small).unwrap(), serde_json::json!({ "a": 1, "b": 1 }));
    }

    #[test]
    fn refuses_tags_and_doubled_keys() {
        assert!(
            matches!(parse("a: !foo x\n", &limits(8)), Err(YamlError::Tagged { ref tag, line: 1, column: 4 }) if tag == "!foo"),
            "{:?}",
            parse("a: !foo x\n", &limits(8))
        );
        assert_eq!(parse("a: !!str 1\n", &limits(8)).unwrap(), serde_json::json!({ "a": "1" }));
        let err = parse("a: 1\na: 2\n", &limits(8)).unwrap_err().to_string();
        assert!(err.contains("\"a\" is given twice"), "{err}");
        let mut lax = limits(8);
        lax.unique_keys = false;
        assert_eq!(parse("a: 1\na: 2\n", &lax).unwrap(), serde_json::json!({ "a": 2 }));
    }
}
