//! Python `re.search` semantics for rule patterns, on the Rust `regex` crate.
//!
//! Rule packs written for DECNET's engine use Python's dialect, and a tag exists or not
//! depending on it, so the translation must be exact where the dialects differ:
//!
//! * `$` (without MULTILINE) also matches just before a final `\n`. Most texts do not
//!   end with `\n`; for them `$` is `\z` and the plain `regex` engine runs. Texts that do
//!   use a second translation, `$` → `(?=\n?\z)`, on `fancy-regex`.
//! * `{` that does not open a valid repetition is a literal (`\${[^}]*}`); `{,n}` means
//!   `{0,n}`; a stray `}` is a literal.
//! * `\s` is `str.isspace()`, which includes `\x1c`–`\x1f` (Rust's `\s` does not).
//! * An escaped punctuation character is that character (`\_`, `\/`, `\%`); an escaped
//!   ASCII letter that Python does not know is an error.
//! * Inside a class, `[`, `&&`, `~~` are plain characters.
//! * Look-around and backreferences exist in Python: such patterns run on `fancy-regex`.
//!
//! A backtracking engine can take time quadratic or worse in its text, so a pattern that
//! needs one runs within a budget: on texts of at most [`BACKTRACKING_TEXT_BYTES`] and
//! [`BACKTRACKING_STEPS`] backtracking steps. A search that would exceed it is
//! [`Search::OverBudget`], never a silent "no match": the caller reports it. The budget is
//! counted in steps and bytes, not time, so whether it is exceeded depends on the text
//! alone. Top-level alternatives of such a pattern are also compiled one by one, and the
//! linear-time ones run first: `(a|a)*\1x|wget` finds `wget` on the `regex` crate
//! whatever the backtracking branch does (for a yes/no search, `A|B` matches where `A` or
//! `B` does).
//!
//! Python's ASCII (`(?a)`) and locale (`(?L)`) flags and possessive quantifiers are
//! rejected with a clear error rather than approximated.

use std::fmt;

/// Python's `str.isspace()` characters, as members of a character class.
const PY_SPACE: &str =
    r"\t\n\x0B\x0C\r\x1C-\x1F \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}";

/// The longest text a pattern that needs the backtracking engine is run on.
pub const BACKTRACKING_TEXT_BYTES: usize = 16 << 10;
/// The backtracking steps such a pattern may take on one text.
pub const BACKTRACKING_STEPS: usize = 200_000;

/// The outcome of a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    Found,
    NotFound,
    /// The backtracking engine would need more than its budget to decide.
    OverBudget,
}

impl Search {
    fn of(found: bool) -> Search {
        if found {
            Search::Found
        } else {
            Search::NotFound
        }
    }

    /// `self` or `other`: found when either is, undecided when neither is found and one
    /// is undecided.
    pub fn or(self, other: impl FnOnce() -> Search) -> Search {
        match self {
            Search::Found => Search::Found,
            Search::NotFound => other(),
            Search::OverBudget => match other() {
                Search::Found => Search::Found,
                _ => Search::OverBudget,
            },
        }
    }
}

/// A pattern compiled with Python `re.search` semantics.
#[derive(Clone, Debug)]
pub struct PyRegex {
    source: String,
    /// For texts that do not end with `\n`.
    plain: Engine,
    plain_text: Option<String>,
    /// For texts that end with `\n`, when `$` makes a difference.
    newline: Option<Engine>,
    /// For a pattern that needs the backtracking engine and has several top-level
    /// alternatives: each alone, the linear-time ones first.
    branches: Vec<PyRegex>,
}

/// Why a pattern does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyRegexError {
    pub pattern: String,
    pub message: String,
}

impl fmt::Display for PyRegexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pattern {:?} does not compile: {}", self.pattern, self.message)
    }
}

impl std::error::Error for PyRegexError {}

#[derive(Clone, Debug)]
enum Engine {
    Plain(regex::Regex),
    /// `capped`: the text length limit applies (the pattern itself needs backtracking, not
    /// only the `$` of a text with a final newline).
    Fancy {
        re: fancy_regex::Regex,
        capped: bool,
    },
}

impl Engine {
    fn new(translated: &str, fancy: bool, capped: bool) -> Result<Engine, String> {
        let built = if fancy {
            fancy_regex::RegexBuilder::new(translated)
                .backtrack_limit(BACKTRACKING_STEPS)
                .build()
                .map(|re| Engine::Fancy { re, capped })
                .map_err(|e| e.to_string())
        } else {
            regex::Regex::new(translated).map(Engine::Plain).map_err(|e| e.to_string())
        };
        // The engines draw multi-line diagrams; problems are reported one per line.
        built.map_err(|e| {
            e.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^'))
                .collect::<Vec<_>>()
                .join(" ")
        })
    }

    fn search(&self, text: &str) -> Search {
        match self {
            Engine::Plain(re) => Search::of(re.is_match(text)),
            Engine::Fancy { capped: true, .. } if text.len() > BACKTRACKING_TEXT_BYTES => Search::OverBudget,
            Engine::Fancy { re, .. } => re.is_match(text).map_or(Search::OverBudget, Search::of),
        }
    }

    fn find<'t>(&self, text: &'t str) -> Option<&'t str> {
        match self {
            Engine::Plain(re) => re.find(text).map(|m| m.as_str()),
            Engine::Fancy { capped: true, .. } if text.len() > BACKTRACKING_TEXT_BYTES => None,
            Engine::Fancy { re, .. } => re.find(text).ok().flatten().map(|m| m.as_str()),
        }
    }

    fn is_fancy(&self) -> bool {
        matches!(self, Engine::Fancy { .. })
    }
}

/// How `$` is translated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dollar {
    /// The text does not end with `\n`: `$` is the end of the text.
    End,
    /// The text ends with `\n`: `$` may also match just before it.
    BeforeFinalNewline,
}

struct Translation {
    text: String,
    fancy: bool,
    /// Whether `$` appeared where its meaning depends on a final newline.
    has_dollar: bool,
}

impl PyRegex {
    pub fn new(pattern: &str) -> Result<PyRegex, PyRegexError> {
        let error = |message: String| PyRegexError { pattern: pattern.to_string(), message };
        let plain = translate(pattern, Dollar::End).map_err(error)?;
        let engine = Engine::new(&plain.text, plain.fancy, plain.fancy).map_err(error)?;
        let newline = if plain.has_dollar {
            let t = translate(pattern, Dollar::BeforeFinalNewline).map_err(error)?;
            Some(Engine::new(&t.text, t.fancy, plain.fancy).map_err(error)?)
        } else {
            None
        };
        let mut branches = Vec::new();
        if plain.fancy {
            if let Some(alternatives) = top_level_branches(pattern) {
                // A branch that does not compile alone keeps the pattern whole.
                if let Ok(mut compiled) = alternatives.iter().map(|b| PyRegex::new(b)).collect::<Result<Vec<_>, _>>() {
                    compiled.sort_by_key(PyRegex::needs_backtracking);
                    branches = compiled;
                }
            }
        }
        let plain_text = (!plain.fancy).then_some(plain.text);
        Ok(PyRegex { source: pattern.to_string(), plain: engine, plain_text, newline, branches })
    }

    /// Python's `re.search(pattern, text) is not None`; a search over its budget counts as
    /// no match here (callers that must report it use [`PyRegex::search`]).
    pub fn is_match(&self, text: &str) -> bool {
        self.search(text) == Search::Found
    }

    /// Python's `re.search(pattern, text) is not None`, or [`Search::OverBudget`] when the
    /// backtracking engine cannot decide within its budget.
    pub fn search(&self, text: &str) -> Search {
        if self.branches.is_empty() {
            return self.engine_for(text).search(text);
        }
        self.branches.iter().fold(Search::NotFound, |acc, branch| acc.or(|| branch.search(text)))
    }

    /// Whether the pattern needs the backtracking engine (look-around or a backreference).
    pub fn needs_backtracking(&self) -> bool {
        self.plain.is_fancy()
    }

    /// The text of the leftmost match (Python's `re.search(...).group(0)`).
    pub fn find(&self, text: &str) -> Option<String> {
        self.engine_for(text).find(text).map(str::to_string)
    }

    /// The Python pattern.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The `regex`-crate translation used for texts that do not end with `\n`, or `None`
    /// when the pattern needs `fancy-regex` (for a `RegexSet` prefilter).
    pub fn plain_translation(&self) -> Option<&str> {
        self.plain_text.as_deref()
    }

    fn engine_for(&self, text: &str) -> &Engine {
        match &self.newline {
            Some(engine) if text.ends_with('\n') => engine,
            _ => &self.plain,
        }
    }
}

/// Translates a Python pattern into the syntax of `regex` / `fancy-regex`.
fn translate(pattern: &str, dollar: Dollar) -> Result<Translation, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut fancy = false;
    let mut has_dollar = false;
    let multiline = leading_flags(&chars)?.contains('m');
    let mut i = 0;
    // Whether the previous item can take a quantifier (so that `{m,n}` is a repetition).
    let mut quantifiable = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                let (piece, used, needs_fancy) = escape(&chars, i, false)?;
                out.push_str(&piece);
                fancy |= needs_fancy;
                i += used;
                quantifiable = true;
                continue;
            }
            '[' => {
                let used = class(&chars, i, &mut out)?;
                i += used;
                quantifiable = true;
                continue;
            }
            '$' if !multiline => {
                has_dollar = true;
                match dollar {
                    Dollar::End => out.push_str(r"\z"),
                    Dollar::BeforeFinalNewline => {
                        out.push_str(r"(?=\n?\z)");
                        fancy = true;
                    }
                }
                quantifiable = false;
            }
            '{' => match repetition(&chars, i) {
                Some((text, used)) if quantifiable => {
                    out.push_str(&text);
                    i += used;
                    if chars.get(i) == Some(&'+') {
                        return Err("possessive quantifiers are not supported".to_string());
                    }
                    quantifiable = false;
                    continue;
                }
                _ => {
                    out.push_str(r"\{");
                    quantifiable = true;
                }
            },
            '}' => {
                out.push_str(r"\}");
                quantifiable = true;
            }
            '(' => {
                let (piece, used, needs_fancy) = group_open(&chars, i)?;
                out.push_str(&piece);
                fancy |= needs_fancy;
                i += used;
                quantifiable = false;
                continue;
            }
            '*' | '+' | '?' => {
                out.push(c);
                if chars.get(i + 1) == Some(&'+') {
                    return Err("possessive quantifiers are not supported".to_string());
                }
                quantifiable = false;
            }
            ')' | '|' | '^' => {
                out.push(c);
                quantifiable = c == ')';
            }
            _ => {
                out.push(c);
                quantifiable = true;
            }
        }
        i += 1;
    }
    Ok(Translation { text: out, fancy, has_dollar })
}

/// The top-level alternatives of a Python pattern, each with the pattern's leading global
/// flags, or `None` when there is one, or when compiling them apart could change what they
/// match: a backreference after the first alternative (group numbers would shift), the
/// verbose flag (whitespace and comments), a class that does not close.
fn top_level_branches(pattern: &str) -> Option<Vec<String>> {
    let chars: Vec<char> = pattern.chars().collect();
    let start = leading_flag_groups(&chars).1;
    let flags: String = chars[..start].iter().collect();
    if flags.contains('x') {
        return None;
    }
    let (mut branches, mut depth, mut last, mut i) = (Vec::new(), 0usize, start, start);
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '[' => {
                let mut j = i + 1;
                if chars.get(j) == Some(&'^') {
                    j += 1;
                }
                if chars.get(j) == Some(&']') {
                    j += 1;
                }
                while *chars.get(j)? != ']' {
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
                i = j;
            }
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '|' if depth == 0 => {
                branches.push(chars[last..i].iter().collect::<String>());
                last = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    branches.push(chars[last.min(chars.len())..].iter().collect());
    let backreference = |b: &String| {
        b.contains("(?P=") || b.as_bytes().windows(2).any(|w| w[0] == b'\\' && (b'1'..=b'9').contains(&w[1]))
    };
    if branches.len() < 2 || branches[1..].iter().any(backreference) {
        return None;
    }
    Some(branches.into_iter().map(|b| format!("{flags}{b}")).collect())
}

/// The letters of the leading `(?flags)` groups of a pattern, and where those groups end.
fn leading_flag_groups(chars: &[char]) -> (String, usize) {
    let mut flags = String::new();
    let mut i = 0;
    while chars.get(i) == Some(&'(') && chars.get(i + 1) == Some(&'?') {
        let mut j = i + 2;
        let start = j;
        while chars.get(j).is_some_and(|c| c.is_ascii_alphabetic()) {
            j += 1;
        }
        if j == start || chars.get(j) != Some(&')') {
            break;
        }
        flags.extend(&chars[start..j]);
        i = j + 1;
    }
    (flags, i)
}

/// The global flags of a leading `(?flags)` group, checked for what Rust cannot do.
fn leading_flags(chars: &[char]) -> Result<String, String> {
    let (flags, _) = leading_flag_groups(chars);
    for f in flags.chars() {
        match f {
            'i' | 'm' | 's' | 'x' | 'u' => {}
            'a' => return Err("the ASCII flag (?a) is not supported".to_string()),
            'L' => return Err("the locale flag (?L) is not supported".to_string()),
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(flags)
}

/// A `{m}`, `{m,}`, `{,n}` or `{m,n}` repetition at `i`, translated, with its length.
fn repetition(chars: &[char], i: usize) -> Option<(String, usize)> {
    let close = chars[i..].iter().position(|&c| c == '}')? + i;
    let body: String = chars[i + 1..close].iter().collect();
    let (min, max) = match body.split_once(',') {
        Some((min, max)) => (min, Some(max)),
        None => (body.as_str(), None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits(min) || max.is_some_and(|m| !digits(m)) || (min.is_empty() && max.is_none_or(str::is_empty)) {
        return None;
    }
    let min = if min.is_empty() { "0" } else { min };
    let text = match max {
        None => format!("{{{min}}}"),
        Some(max) => format!("{{{min},{max}}}"),
    };
    Some((text, close - i + 1))
}

/// A group opening at `i`: its translation, length and whether it needs `fancy-regex`.
fn group_open(chars: &[char], i: usize) -> Result<(String, usize, bool), String> {
    let rest: String = chars[i..chars.len().min(i + 4)].iter().collect();
    if !rest.starts_with("(?") {
        return Ok(("(".to_string(), 1, false));
    }
    for lookaround in ["(?<=", "(?<!", "(?=", "(?!"] {
        if rest.starts_with(lookaround) {
            return Ok((lookaround.to_string(), lookaround.chars().count(), true));
        }
    }
    if rest.starts_with("(?#") {
        let close = chars[i..].iter().position(|&c| c == ')').ok_or("unterminated comment")? + i;
        return Ok((String::new(), close - i + 1, false));
    }
    if rest.starts_with("(?P=") {
        let close = chars[i..].iter().position(|&c| c == ')').ok_or("unterminated backreference")? + i;
        let name: String = chars[i + 4..close].iter().collect();
        return Ok((format!(r"\k<{name}>"), close - i + 1, true));
    }
    if rest.starts_with("(?P<") || rest.starts_with("(?:") {
        return Ok((rest[..3].to_string(), 3, false));
    }
    // Inline flags, global `(?i)` or scoped `(?i:...)`; validated like leading flags.
    let mut j = i + 2;
    while chars.get(j).is_some_and(|c| c.is_ascii_alphabetic() || *c == '-') {
        j += 1;
    }
    match chars.get(j) {
        Some(':') | Some(')') => {
            let flags: String = chars[i + 2..j].iter().collect();
            if flags.contains(['a', 'L']) {
                return Err(format!("the flags (?{flags}) are not supported"));
            }
            let text: String = chars[i..=j].iter().collect();
            Ok((text, j - i + 1, false))
        }
        _ => Err(format!("unknown group syntax at position {i}")),
    }
}

/// An escape sequence at `i` (a backslash): translation, length, needs `fancy-regex`.
fn escape(chars: &[char], i: usize, in_class: bool) -> Result<(String, usize, bool), String> {
    let Some(&c) = chars.get(i + 1) else { return Err("pattern ends with a backslash".to_string()) };
    let hex = |n: usize| -> Result<String, String> {
        let digits: String = chars.get(i + 2..i + 2 + n).ok_or("incomplete escape")?.iter().collect();
        if digits.chars().all(|d| d.is_ascii_hexdigit()) {
            Ok(digits)
        } else {
            Err(format!("bad escape \\{c}{digits}"))
        }
    };
    Ok(match c {
        's' if in_class => (PY_SPACE.to_string(), 2, false),
        's' => (format!("[{PY_SPACE}]"), 2, false),
        'S' => (format!("[^{PY_SPACE}]"), 2, false),
        'd' | 'D' | 'w' | 'W' | 'n' | 't' | 'r' | 'f' | 'v' | 'a' => (format!("\\{c}"), 2, false),
        'b' if in_class => (r"\x08".to_string(), 2, false),
        'b' | 'B' | 'A' if !in_class => (format!("\\{c}"), 2, false),
        'Z' if !in_class => (r"\z".to_string(), 2, false),
        'x' => (format!("\\x{{{}}}", hex(2)?), 4, false),
        'u' => (format!("\\x{{{}}}", hex(4)?), 6, false),
        'U' => (format!("\\x{{{}}}", hex(8)?), 10, false),
        '0' => {
            // Octal: `\0` followed by up to two more octal digits.
            let digits: String = chars[i + 1..].iter().take(3).take_while(|d| ('0'..='7').contains(d)).collect();
            let value = u32::from_str_radix(&digits, 8).map_err(|e| e.to_string())?;
            (format!("\\x{{{value:X}}}"), 1 + digits.len(), false)
        }
        '1'..='7' if chars.get(i + 1..i + 4).is_some_and(|d| d.iter().all(|c| ('0'..='7').contains(c))) => {
            // Three octal digits are a character, not a group reference.
            let digits: String = chars[i + 1..i + 4].iter().collect();
            let value = u32::from_str_radix(&digits, 8).map_err(|e| e.to_string())?;
            (format!("\\x{{{value:X}}}"), 4, false)
        }
        '1'..='9' if !in_class => {
            let digits: String = chars[i + 1..].iter().take(2).take_while(|d| d.is_ascii_digit()).collect();
            (format!("\\{digits}"), 1 + digits.len(), true)
        }
        c if c.is_ascii_alphanumeric() => return Err(format!("bad escape \\{c}")),
        // Any other escaped character is itself; spelled as a code point so that it
        // means the same inside and outside classes.
        c => (format!("\\x{{{:X}}}", c as u32), 2, false),
    })
}

/// A character class at `i` (an opening bracket), written to `out`; returns its length.
fn class(chars: &[char], i: usize, out: &mut String) -> Result<usize, String> {
    let mut j = i + 1;
    out.push('[');
    if chars.get(j) == Some(&'^') {
        out.push('^');
        j += 1;
    }
    let mut first = true;
    loop {
        let Some(&c) = chars.get(j) else { return Err("unterminated character set".to_string()) };
        match c {
            ']' if !first => {
                out.push(']');
                return Ok(j - i + 1);
            }
            '\\' => {
                let (piece, used, _) = escape(chars, j, true)?;
                out.push_str(&piece);
                j += used;
                first = false;
                continue;
            }
            // Characters that Rust's class syntax gives a meaning Python's does not.
            '[' | ']' | '&' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '-' if chars.get(j + 1) == Some(&'-') => out.push_str(r"\-"),
            c => out.push(c),
        }
        first = false;
        j += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linear_alternative_decides_whatever_the_backtracking_one_does() {
        // Python: re.search(r"(a|a)*\1x|wget", "a" * 18 + " wget") matches.
        let re = PyRegex::new(r"(a|a)*\1x|wget").unwrap();
        let text = format!("{} wget", "a".repeat(18));
        assert_eq!(re.search(&text), Search::Found);
        assert_eq!(re.search("aax"), Search::Found);
        assert_eq!(re.search("ax"), Search::NotFound);
        let re = PyRegex::new(r"(?i)(?=.*curl)x|WGET").unwrap();
        assert_eq!(re.search("wget"), Search::Found, "global flags apply to every alternative");
        assert_eq!(re.search("X curl"), Search::Found);
        assert_eq!(re.search(&"a".repeat(BACKTRACKING_TEXT_BYTES + 1)), Search::OverBudget);
        assert_eq!(re.search(&format!("{}wget", "a".repeat(BACKTRACKING_TEXT_BYTES))), Search::Found);
    }

    #[test]
    fn a_backtracking_pattern_over_its_budget_is_reported_not_missed() {
        let re = PyRegex::new(r"(?=(a+)+b)").unwrap();
        assert!(re.needs_backtracking());
        assert_eq!(re.search(&"a".repeat(100_000)), Search::OverBudget, "over the text limit");
        assert_eq!(re.search(&format!("{}b", "a".repeat(1000))), Search::Found);
        let re = PyRegex::new(r"(?i)(a|b|ab)*(?=c)").unwrap();
        assert_eq!(re.search(&"ab".repeat(28)), Search::OverBudget, "over the step limit");
        assert!(!re.is_match(&"ab".repeat(28)));
        assert!(!PyRegex::new(r"a|b").unwrap().needs_backtracking());
    }

    #[test]
    fn alternatives_are_split_only_where_it_keeps_the_meaning() {
        assert_eq!(
            top_level_branches(r"(?i)a(?=b)|[|]c|\|d|(e|f)"),
            Some(vec!["(?i)a(?=b)".to_string(), "(?i)[|]c".into(), "(?i)\\|d".into(), "(?i)(e|f)".into()])
        );
        assert_eq!(top_level_branches(r"(a)(?=x)|\1"), None, "a backreference after the first alternative");
        assert_eq!(top_level_branches(r"(?x)a(?=b) | c"), None);
        assert_eq!(top_level_branches(r"a(?=b)"), None);
        assert_eq!(top_level_branches(r"[a|b"), None);
    }

    fn matches(pattern: &str, text: &str) -> bool {
        PyRegex::new(pattern).unwrap_or_else(|e| panic!("{e}")).is_match(text)
    }

    #[test]
    fn dollar_matches_before_a_final_newline_only() {
        assert!(matches("a$", "a"));
        assert!(matches("a$", "a\n"));
        assert!(!matches("a$", "a\n\n"));
        assert!(!matches("a$", "a\nb"));
        assert!(matches(r"lsb_release(?:\s|$)\b", "lsb_release\n"));
        assert!(matches("(?m)a$", "a\nb"));
        assert!(!matches(r"a\Z", "a\n"));
    }

    #[test]
    fn braces_that_are_not_repetitions_are_literals() {
        assert!(matches(r"\$\{(?:jndi|\${[^}]*}):(?:ldap|ldaps|rmi|dns|http)s?://", "${${x}:ldap://a}"));
        assert!(!matches(r"\$\{(?:jndi|\${[^}]*}):(?:ldap|ldaps|rmi|dns|http)s?://", "${${lower:j}ndi:ldap://a}"));
        assert!(matches(r"\$\{(?:jndi|\${[^}]*}):(?:ldap|ldaps|rmi|dns|http)s?://", "${jndi:ldap://a}"));
        assert!(matches("a{,2}b", "aab"));
        assert!(matches("x{,2}$", "xx"));
        assert!(!matches("^x{,2}$", "xxx"));
        assert!(matches("a{x}", "a{x}"));
        assert!(matches("{2}", "{2}"));
        assert!(matches("a}", "a}"));
    }

    #[test]
    fn escapes_follow_python() {
        assert!(matches(r"DELETE\s+/\_all", "DELETE /_all"));
        assert!(matches(r"\/\%\-", "/%-"));
        assert!(matches(r"a\sb", "a\x1cb"));
        assert!(matches(r"a[\s]b", "a\x1fb"));
        assert!(!matches(r"a\Sb", "a\u{2003}b"));
        assert!(matches(r"[^|;\s]+x", "abcx"));
        assert!(matches(r"\x41\u0042\101", "ABA"));
        assert!(PyRegex::new(r"\q").is_err());
    }

    #[test]
    fn classes_keep_python_meanings() {
        assert!(matches("[[]", "["));
        assert!(matches("[a&&b]", "&"));
        assert!(matches("[]a]", "]"));
        assert!(matches("[~~]", "~"));
    }

    #[test]
    fn lookahead_and_backreferences_use_the_backtracking_engine() {
        let re = PyRegex::new(r"\bfind\s+/(?:home|etc)?(?=\s|/|$)").unwrap();
        assert!(re.is_match("find /"));
        assert!(re.is_match("find /\n"));
        assert!(!re.is_match("find /x"));
        assert!(re.is_match("find /etc/x"));
        assert!(re.plain_translation().is_none());
        assert!(matches(r"(a)\1", "aa"));
        assert!(matches(r"(?P<x>a)(?P=x)", "aa"));
        assert!(PyRegex::new("ab").unwrap().plain_translation().is_some());
    }

    #[test]
    fn unsupported_and_invalid_patterns_are_errors() {
        for bad in ["(abc", "(?a)x", "a++", "x{1,2}+", "[a", "\\", "(?<x"] {
            assert!(PyRegex::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn find_returns_the_leftmost_match() {
        assert_eq!(PyRegex::new(r"\d+").unwrap().find("ab 12 34").as_deref(), Some("12"));
    }

    fn conformance_file() -> Option<String> {
        let dir = std::env::var_os("TTPFLOW_CONFORMANCE_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance"));
        match std::fs::read_to_string(dir.join("golden/engine_vectors.json")) {
            Ok(text) => Some(text),
            Err(_) => {
                println!("skipping: conformance data not found at {}", dir.display());
                None
            }
        }
    }

    /// Python's own answers for every pattern of DECNET's pack on 282 probe strings.
    #[test]
    fn python_oracle_agrees() {
        let Some(text) = conformance_file() else { return };
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let oracle = &doc["regex_oracle"];
        let probes: Vec<&str> = oracle["probes"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        let patterns = oracle["patterns"].as_object().unwrap();
        assert!(patterns.len() >= 43 && probes.len() >= 282);
        let mut failures = Vec::new();
        for (name, entry) in patterns {
            let pattern = entry["pattern"].as_str().unwrap();
            let want: std::collections::BTreeSet<usize> = entry["matching_probe_indices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as usize)
                .collect();
            let re = match PyRegex::new(pattern) {
                Ok(re) => re,
                Err(e) => {
                    failures.push(format!("{name}: {e}"));
                    continue;
                }
            };
            for (idx, probe) in probes.iter().enumerate() {
                if re.is_match(probe) != want.contains(&idx) {
                    failures.push(format!(
                        "{name} {pattern:?} on probe {idx} {probe:?}: python says {}",
                        want.contains(&idx)
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
    }

    /// No pattern or text makes the translator or the engines panic.
    #[test]
    fn arbitrary_patterns_never_panic() {
        let Some(text) = conformance_file() else { return };
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        for probe in doc["regex_oracle"]["probes"].as_array().unwrap() {
            let probe = probe.as_str().unwrap();
            if let Ok(re) = PyRegex::new(probe) {
                re.is_match(probe);
            }
        }
    }
}
