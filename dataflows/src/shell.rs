//! Shell-aware command subjects: a command line split into the simple commands a shell would
//! run, with wrappers stripped, so that a rule can say "program `cat` reading `/etc/shadow`"
//! instead of one more regex over the raw line.
//!
//! [`simple_commands`] reads a line the way a POSIX shell's lexer would, far enough for
//! matching: words with quotes removed (`'…'`, `"…"`, `$'…'`, backslashes), the operators
//! that separate commands (`;` `&` `&&` `||` `|` `|&` newlines, `( )`, and `{ }` and the
//! compound keywords in command position), redirections (`>`, `>>`, `>|`, `&>`, `N>`,
//! `<`, `<<<`, here-documents), and the command lines nested in a line: `$(…)`, backticks,
//! `<(…)`, the string of `sh -c '…'` (and `bash`, `dash`, `zsh`, `ksh`, `ash`, `mksh`,
//! `busybox sh`), `su -c '…'` and `eval …`. A simple command then loses its leading
//! assignments (`X=1 cmd`) and its wrappers (`sudo`, `env`, `nohup`, `timeout 5`,
//! `xargs -n1`, `busybox`, …, with their options), and its program is the basename of
//! what remains (`/usr/bin/cat` → `cat`).
//!
//! It is written here rather than taken from a shell-lexing crate because those split one
//! command into words (and give up on an unbalanced quote), while matching needs the
//! operators, substitutions and nested `-c` strings of a whole line, and must read the
//! unbalanced, truncated lines attackers type without failing: an unclosed quote or
//! substitution runs to the end of the line. Work is linear in the line per nesting level,
//! nesting is bounded by [`MAX_DEPTH`] and the commands of a line by [`MAX_COMMANDS`].
//!
//! [`ShellMatch`] is the compiled `match: {shell: {…}}` condition of a rule: every key given
//! (`program`, `wrapper`, `argument`, `line`, `writes`, `assigns`) must hold for the same
//! simple command, and the rule fires when any simple command of the line satisfies them.

use crate::json::Json;
use crate::pyregex::{PyRegex, Search};

/// How deeply nested command lines (`$(…)` in `sh -c '…'` in …) are read.
pub const MAX_DEPTH: usize = 8;
/// The most simple commands read from one line.
pub const MAX_COMMANDS: usize = 1024;

/// One simple command of a line, as rules see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimpleCommand {
    /// The basename of the program, after assignments and wrappers; empty for a command of
    /// assignments only (`HISTSIZE=0`).
    pub program: String,
    /// The wrappers stripped before the program, outermost first (`sudo`, `env`, …).
    pub wrappers: Vec<String>,
    /// The words after the program, then the sources of input redirections.
    pub args: Vec<String>,
    /// The targets of output redirections.
    pub writes: Vec<String>,
    /// Variable assignments (`NAME=value`) before the program or wrappers.
    pub assigns: Vec<String>,
    /// The command as `program arg1 arg2 …`, single spaces, quotes removed.
    pub line: String,
}

/// The simple commands of `line`, outer ones first, each followed by those nested in it.
pub fn simple_commands(line: &str) -> Vec<SimpleCommand> {
    let mut out = Vec::new();
    read_line(line, 0, &mut out);
    out
}

fn read_line(line: &str, depth: usize, out: &mut Vec<SimpleCommand>) {
    if depth > MAX_DEPTH {
        return;
    }
    let (raws, nested) = Lexer::new(line).run();
    for raw in raws {
        if out.len() >= MAX_COMMANDS {
            return;
        }
        let (command, inner) = finish(raw);
        if let Some(command) = command {
            out.push(command);
        }
        if let Some(inner) = inner {
            read_line(&inner, depth + 1, out);
        }
    }
    for inner in nested {
        if out.len() >= MAX_COMMANDS {
            return;
        }
        read_line(&inner, depth + 1, out);
    }
}

/// A simple command as the lexer leaves it: words, redirection targets.
#[derive(Default)]
struct Raw {
    words: Vec<String>,
    reads: Vec<String>,
    writes: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Redirect {
    Read,
    Write,
    /// `>&N`, `<&N`: a target that is a descriptor is no file.
    Dup,
    HereDoc {
        strip_tabs: bool,
    },
}

/// A one-pass lexer of a line into raw simple commands and the command lines nested in
/// its words (substitutions).
struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    text: &'a str,
    raws: Vec<Raw>,
    current: Raw,
    nested: Vec<String>,
    word: String,
    /// Whether a word is being read (an empty quoted word is still a word).
    in_word: bool,
    /// Whether the word so far came only from unquoted digits (a descriptor before `>`).
    digits_only: bool,
    redirect: Option<Redirect>,
    heredocs: Vec<(String, bool)>,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Lexer<'a> {
        Lexer {
            chars: text.char_indices().peekable(),
            text,
            raws: Vec::new(),
            current: Raw::default(),
            nested: Vec::new(),
            word: String::new(),
            in_word: false,
            digits_only: true,
            redirect: None,
            heredocs: Vec::new(),
        }
    }

    fn run(mut self) -> (Vec<Raw>, Vec<String>) {
        while let Some((_, c)) = self.chars.next() {
            match c {
                ' ' | '\t' | '\r' => self.end_word(),
                '\n' => {
                    self.end_word();
                    self.end_command();
                    self.skip_heredocs();
                }
                ';' | '(' | ')' => {
                    self.end_word();
                    self.end_command();
                }
                '|' => {
                    self.end_word();
                    self.end_command();
                    self.eat_if(|c| c == '|' || c == '&');
                }
                '&' => {
                    self.end_word();
                    if self.eat_if(|c| c == '>') {
                        self.eat_if(|c| c == '>');
                        self.redirect = Some(Redirect::Write);
                    } else {
                        self.end_command();
                        self.eat_if(|c| c == '&');
                    }
                }
                '>' | '<' => self.redirection(c),
                '#' if !self.in_word => self.skip_comment(),
                '\'' => {
                    self.start_word();
                    self.single_quoted();
                }
                '"' => {
                    self.start_word();
                    self.double_quoted();
                }
                '\\' => {
                    self.start_word();
                    match self.chars.next() {
                        Some((_, '\n')) => {}
                        Some((_, next)) => self.word.push(next),
                        None => {}
                    }
                }
                '$' => {
                    self.start_word();
                    self.dollar();
                }
                '`' => {
                    self.start_word();
                    let inner = self.backquoted();
                    self.word.push('`');
                    self.word.push_str(&inner);
                    self.word.push('`');
                    self.nested.push(inner);
                }
                _ => {
                    if !c.is_ascii_digit() {
                        self.digits_only = false;
                    }
                    self.in_word = true;
                    self.word.push(c);
                }
            }
        }
        self.end_word();
        self.end_command();
        (self.raws, self.nested)
    }

    fn eat_if(&mut self, f: impl Fn(char) -> bool) -> bool {
        match self.chars.peek() {
            Some(&(_, c)) if f(c) => {
                self.chars.next();
                true
            }
            _ => false,
        }
    }

    fn start_word(&mut self) {
        self.in_word = true;
        self.digits_only = false;
    }

    fn end_word(&mut self) {
        if !self.in_word {
            return;
        }
        let word = std::mem::take(&mut self.word);
        self.in_word = false;
        self.digits_only = true;
        match self.redirect.take() {
            Some(Redirect::Read) => self.current.reads.push(word),
            Some(Redirect::Write) => self.current.writes.push(word),
            Some(Redirect::Dup) => {
                if !(word == "-" || word.bytes().all(|b| b.is_ascii_digit())) {
                    self.current.writes.push(word);
                }
            }
            Some(Redirect::HereDoc { strip_tabs }) => self.heredocs.push((word, strip_tabs)),
            None => self.current.words.push(word),
        }
    }

    fn end_command(&mut self) {
        let raw = std::mem::take(&mut self.current);
        if !(raw.words.is_empty() && raw.reads.is_empty() && raw.writes.is_empty()) {
            self.raws.push(raw);
        }
    }

    /// `>`, `>>`, `>|`, `>&`, `<`, `<<`, `<<-`, `<<<`, `<>`, `<&`, and `<(…)`, `>(…)`.
    fn redirection(&mut self, c: char) {
        if self.eat_if(|n| n == '(') {
            // Process substitution: a word whose text is a command line.
            self.start_word();
            let inner = self.until_close_paren();
            self.word.push(c);
            self.word.push('(');
            self.word.push_str(&inner);
            self.word.push(')');
            self.nested.push(inner);
            return;
        }
        // Digits just before the operator name a descriptor, not a word.
        if self.in_word && self.digits_only {
            self.word.clear();
            self.in_word = false;
        } else {
            self.end_word();
        }
        self.digits_only = true;
        let kind = if c == '>' {
            if self.eat_if(|n| n == '&') {
                Redirect::Dup
            } else {
                self.eat_if(|n| n == '>' || n == '|');
                Redirect::Write
            }
        } else if self.eat_if(|n| n == '<') {
            if self.eat_if(|n| n == '<') {
                Redirect::Read
            } else {
                Redirect::HereDoc { strip_tabs: self.eat_if(|n| n == '-') }
            }
        } else if self.eat_if(|n| n == '&') {
            Redirect::Dup
        } else {
            // `<>` opens for reading and writing: a read is what matters here.
            self.eat_if(|n| n == '>');
            Redirect::Read
        };
        self.redirect = Some(kind);
    }

    fn skip_comment(&mut self) {
        while let Some(&(_, c)) = self.chars.peek() {
            if c == '\n' {
                break;
            }
            self.chars.next();
        }
    }

    /// After a newline, the bodies of the here-documents opened on the line before.
    fn skip_heredocs(&mut self) {
        for (delimiter, strip_tabs) in std::mem::take(&mut self.heredocs) {
            loop {
                let Some(&(start, _)) = self.chars.peek() else { return };
                let end = self.text[start..].find('\n').map_or(self.text.len(), |i| start + i);
                let body_line = &self.text[start..end];
                let body_line = if strip_tabs { body_line.trim_start_matches('\t') } else { body_line };
                let done = body_line == delimiter;
                while self.chars.peek().is_some_and(|&(i, _)| i <= end) {
                    self.chars.next();
                }
                if done {
                    break;
                }
            }
        }
    }

    fn single_quoted(&mut self) {
        for (_, c) in self.chars.by_ref() {
            if c == '\'' {
                return;
            }
            self.word.push(c);
        }
    }

    fn double_quoted(&mut self) {
        while let Some((_, c)) = self.chars.next() {
            match c {
                '"' => return,
                '\\' => match self.chars.peek() {
                    Some(&(_, n @ ('"' | '\\' | '$' | '`'))) => {
                        self.chars.next();
                        self.word.push(n);
                    }
                    Some(&(_, '\n')) => {
                        self.chars.next();
                    }
                    _ => self.word.push('\\'),
                },
                '$' => self.dollar(),
                '`' => {
                    let inner = self.backquoted();
                    self.word.push('`');
                    self.word.push_str(&inner);
                    self.word.push('`');
                    self.nested.push(inner);
                }
                _ => self.word.push(c),
            }
        }
    }

    /// After `$`: `$(…)` is a nested command line, `$'…'` ANSI-C quoting; other
    /// expansions stay in the word as written.
    fn dollar(&mut self) {
        match self.chars.peek() {
            Some(&(_, '(')) => {
                self.chars.next();
                let inner = self.until_close_paren();
                self.word.push_str("$(");
                self.word.push_str(&inner);
                self.word.push(')');
                self.nested.push(inner);
            }
            Some(&(_, '\'')) => {
                self.chars.next();
                self.ansi_c_quoted();
            }
            _ => self.word.push('$'),
        }
    }

    fn ansi_c_quoted(&mut self) {
        while let Some((_, c)) = self.chars.next() {
            match c {
                '\'' => return,
                '\\' => {
                    let Some((_, e)) = self.chars.next() else { return };
                    match e {
                        'n' => self.word.push('\n'),
                        't' => self.word.push('\t'),
                        'r' => self.word.push('\r'),
                        'x' => {
                            let mut value = 0u32;
                            let mut digits = 0;
                            while digits < 2 {
                                match self.chars.peek().and_then(|&(_, h)| h.to_digit(16)) {
                                    Some(d) => {
                                        value = value * 16 + d;
                                        digits += 1;
                                        self.chars.next();
                                    }
                                    None => break,
                                }
                            }
                            if digits == 0 {
                                self.word.push_str("\\x");
                            } else if let Some(ch) = char::from_u32(value) {
                                self.word.push(ch);
                            }
                        }
                        other => self.word.push(other),
                    }
                }
                _ => self.word.push(c),
            }
        }
    }

    /// The text up to the `)` that closes an opened `(`, quotes respected; the rest of
    /// the line when it is never closed.
    fn until_close_paren(&mut self) -> String {
        let mut depth = 1usize;
        let mut inner = String::new();
        let mut quote: Option<char> = None;
        while let Some((_, c)) = self.chars.next() {
            match (quote, c) {
                (Some(q), _) if c == q => quote = None,
                (Some('"'), '\\') | (None, '\\') => {
                    inner.push(c);
                    if let Some((_, n)) = self.chars.next() {
                        inner.push(n);
                    }
                    continue;
                }
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '(') => depth += 1,
                (None, ')') => {
                    depth -= 1;
                    if depth == 0 {
                        return inner;
                    }
                }
                _ => {}
            }
            inner.push(c);
        }
        inner
    }

    /// The text up to the closing backquote, `\`` unescaped; the rest of the line when it
    /// is never closed.
    fn backquoted(&mut self) -> String {
        let mut inner = String::new();
        while let Some((_, c)) = self.chars.next() {
            match c {
                '`' => return inner,
                '\\' => match self.chars.next() {
                    Some((_, n @ ('`' | '\\' | '$'))) => inner.push(n),
                    Some((_, n)) => {
                        inner.push('\\');
                        inner.push(n);
                    }
                    None => inner.push('\\'),
                },
                _ => inner.push(c),
            }
        }
        inner
    }
}

/// Words that open or close a compound command where a command would start: they are
/// no program, and the command after them is read as usual.
fn is_keyword(word: &str) -> bool {
    matches!(word, "if" | "then" | "elif" | "else" | "fi" | "do" | "done" | "while" | "until" | "!" | "{" | "}")
}

fn is_assignment(word: &str) -> bool {
    let Some((name, _)) = word.split_once('=') else { return false };
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn basename(word: &str) -> &str {
    let trimmed = word.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// A wrapper's options: those that take a value as the next word, and whether the first
/// word after the options is an operand of the wrapper (a duration, a new root).
struct Wrapper {
    valued: &'static [&'static str],
    operand: bool,
}

fn wrapper(name: &str) -> Option<Wrapper> {
    let w = |valued, operand| Some(Wrapper { valued, operand });
    match name {
        "sudo" => w(&["-u", "-g", "-p", "-C", "-D", "-r", "-t", "-U", "-T", "-h", "-R"], false),
        "doas" => w(&["-u", "-C"], false),
        "env" => w(&["-u", "-C", "-S", "--unset", "--chdir", "--split-string"], false),
        "nohup" | "builtin" | "busybox" => w(&[], false),
        "timeout" => w(&["-s", "-k", "--signal", "--kill-after"], true),
        "nice" => w(&["-n", "--adjustment"], false),
        "ionice" => w(&["-c", "-n", "--class", "--classdata"], false),
        "time" => w(&["-f", "-o", "--format", "--output"], false),
        "exec" => w(&["-a"], false),
        "command" => w(&[], false),
        "setsid" | "stdbuf" => w(&["-i", "-o", "-e", "--input", "--output", "--error"], false),
        "xargs" => w(
            &[
                "-n",
                "-I",
                "-L",
                "-P",
                "-s",
                "-d",
                "-E",
                "-a",
                "--max-args",
                "--replace",
                "--max-lines",
                "--max-procs",
                "--max-chars",
                "--delimiter",
                "--eof",
                "--arg-file",
            ],
            false,
        ),
        "chroot" => w(&["--userspec", "--groups"], true),
        _ => None,
    }
}

/// Where the command of `words` starts after the wrapper at `words[0]`, or `None` when it
/// wraps no command (`sudo -l`, `command -v nmap`: the wrapper is the program).
fn skip_wrapper(name: &str, words: &[String], assigns: &mut Vec<String>) -> Option<usize> {
    let spec = wrapper(name)?;
    let mut i = 1;
    while let Some(word) = words.get(i) {
        if word == "--" {
            i += 1;
            break;
        }
        if name == "env" && is_assignment(word) {
            assigns.push(word.clone());
            i += 1;
            continue;
        }
        let is_option = word.starts_with('-') && word.len() > 1 && !(name == "nice" && is_number(&word[1..]));
        if !is_option {
            if name == "nice" && word.starts_with('-') {
                i += 1;
                continue;
            }
            break;
        }
        if name == "command" && (word.contains('v') || word.contains('V')) {
            return None;
        }
        let option = word.split_once('=').map_or(word.as_str(), |(o, _)| o);
        i += if spec.valued.contains(&option) && !word.contains('=') { 2 } else { 1 };
    }
    if spec.operand {
        i += 1;
    }
    (i < words.len()).then_some(i)
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The string a shell, `su` or `eval` runs as a command line, when `command` has one.
fn nested_line(command: &SimpleCommand) -> Option<String> {
    let args = &command.args;
    match command.program.as_str() {
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "ash" | "mksh" => {
            let at = args.iter().position(|a| a.starts_with('-') && !a.starts_with("--") && a.contains('c'))?;
            args.get(at + 1).cloned()
        }
        "su" => args.iter().enumerate().find_map(|(i, a)| match a.as_str() {
            "-c" | "--command" => args.get(i + 1).cloned(),
            _ => a.strip_prefix("--command=").map(str::to_string),
        }),
        "eval" => (!args.is_empty()).then(|| args.join(" ")),
        _ => None,
    }
}

/// A raw simple command as rules see it, and the command line it runs in turn.
fn finish(raw: Raw) -> (Option<SimpleCommand>, Option<String>) {
    let mut words = raw.words.as_slice();
    while words.first().is_some_and(|w| is_keyword(w)) {
        words = &words[1..];
    }
    let mut command = SimpleCommand { writes: raw.writes, ..SimpleCommand::default() };
    while let Some(word) = words.first().filter(|w| is_assignment(w)) {
        command.assigns.push(word.clone());
        words = &words[1..];
    }
    // `busybox sh -c …`, `busybox rm …`: the applet is the program.
    while let Some(first) = words.first() {
        let name = basename(first);
        let Some(next) = skip_wrapper(name, words, &mut command.assigns) else { break };
        command.wrappers.push(name.to_string());
        words = &words[next..];
    }
    if let Some((first, rest)) = words.split_first() {
        command.program = basename(first).to_string();
        command.args = rest.to_vec();
    }
    command.args.extend(raw.reads);
    if command.program.is_empty() && command.assigns.is_empty() && command.args.is_empty() && command.writes.is_empty()
    {
        return (None, None);
    }
    command.line = command.program.clone();
    for arg in &command.args {
        command.line.push(' ');
        command.line.push_str(arg);
    }
    let inner = nested_line(&command);
    (Some(command), inner)
}

/// A program or wrapper name of a rule: exact, or a prefix when written with a final `*`.
#[derive(Clone, Debug)]
enum Name {
    Exact(String),
    Prefix(String),
}

impl Name {
    fn matches(&self, name: &str) -> bool {
        match self {
            Name::Exact(n) => n == name,
            Name::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

/// A rule's `match: {shell: {…}}`, compiled.
#[derive(Clone, Debug)]
pub struct ShellMatch {
    programs: Vec<Name>,
    wrappers: Vec<Name>,
    argument: Option<PyRegex>,
    line: Option<PyRegex>,
    writes: Option<PyRegex>,
    assigns: Option<PyRegex>,
    /// A condition the same simple command must not satisfy (exclusions without look-around,
    /// so that the patterns stay on the linear-time engine).
    not: Option<Box<ShellMatch>>,
}

/// The keys of a `shell` match.
pub const SHELL_KEYS: &[&str] = &["program", "wrapper", "argument", "line", "writes", "assigns", "not"];

impl ShellMatch {
    /// Compiles the mapping under `shell:`. Errors name the key: `shell.argument: …`.
    pub fn compile(spec: &Json) -> Result<ShellMatch, String> {
        let Json::Obj(fields) = spec else {
            return Err(format!("shell: must be a mapping, got {}", spec.type_name()));
        };
        let mut m = ShellMatch {
            programs: Vec::new(),
            wrappers: Vec::new(),
            argument: None,
            line: None,
            writes: None,
            assigns: None,
            not: None,
        };
        for (key, value) in fields {
            match key.as_str() {
                "program" => m.programs = names(key, value)?,
                "wrapper" => m.wrappers = names(key, value)?,
                "argument" => m.argument = Some(pattern(key, value)?),
                "line" => m.line = Some(pattern(key, value)?),
                "writes" => m.writes = Some(pattern(key, value)?),
                "assigns" => m.assigns = Some(pattern(key, value)?),
                "not" => {
                    let not = ShellMatch::compile(value).map_err(|e| format!("shell.not{}", &e["shell".len()..]))?;
                    m.not = Some(Box::new(not));
                }
                other => return Err(format!("shell.{other}: unknown key (expected one of {})", SHELL_KEYS.join(", "))),
            }
        }
        if fields.is_empty() {
            return Err(format!("shell: needs at least one of {}", SHELL_KEYS.join(", ")));
        }
        Ok(m)
    }

    /// Whether some simple command of `commands` satisfies every condition.
    pub fn matches(&self, commands: &[SimpleCommand]) -> bool {
        self.search(commands) == Search::Found
    }

    /// [`ShellMatch::matches`], or [`Search::OverBudget`] when a pattern that needs the
    /// backtracking engine could not decide for a command that nothing else ruled out.
    pub fn search(&self, commands: &[SimpleCommand]) -> Search {
        commands.iter().fold(Search::NotFound, |acc, c| acc.or(|| self.search_one(c)))
    }

    fn search_one(&self, c: &SimpleCommand) -> Search {
        if !(self.programs.is_empty() || self.programs.iter().any(|n| n.matches(&c.program)))
            || !(self.wrappers.is_empty() || c.wrappers.iter().any(|w| self.wrappers.iter().any(|n| n.matches(w))))
        {
            return Search::NotFound;
        }
        let any = |re: &Option<PyRegex>, texts: &[String]| match re {
            None => Search::Found,
            Some(re) => texts.iter().fold(Search::NotFound, |acc, t| acc.or(|| re.search(t))),
        };
        // In order, stopping at the first condition that fails: a pattern runs only when
        // the cheaper ones before it hold.
        let conditions: [(&Option<PyRegex>, &[String]); 4] = [
            (&self.argument, &c.args),
            (&self.writes, &c.writes),
            (&self.assigns, &c.assigns),
            (&self.line, std::slice::from_ref(&c.line)),
        ];
        let mut judged = Search::Found;
        for (re, texts) in conditions {
            match any(re, texts) {
                Search::NotFound => return Search::NotFound,
                Search::OverBudget => judged = Search::OverBudget,
                Search::Found => {}
            }
        }
        match self.not.as_ref().map(|not| not.search_one(c)) {
            Some(Search::Found) => Search::NotFound,
            Some(Search::OverBudget) => Search::OverBudget,
            _ => judged,
        }
    }

    /// Every pattern of the condition, its exclusions' included.
    pub fn patterns(&self) -> Vec<&PyRegex> {
        let mut out: Vec<&PyRegex> =
            [&self.argument, &self.line, &self.writes, &self.assigns].into_iter().flatten().collect();
        if let Some(not) = &self.not {
            out.extend(not.patterns());
        }
        out
    }

    /// The programs one of which a simple command must have for the match to hold, when
    /// they are exact names: the key under which a pack indexes the rule.
    pub fn required_programs(&self) -> Option<Vec<&str>> {
        if self.programs.is_empty() {
            return None;
        }
        self.programs
            .iter()
            .map(|n| match n {
                Name::Exact(name) => Some(name.as_str()),
                Name::Prefix(_) => None,
            })
            .collect()
    }
}

fn names(key: &str, value: &Json) -> Result<Vec<Name>, String> {
    let items = match value {
        Json::Arr(items) if !items.is_empty() => items.as_slice(),
        Json::Str(_) => std::slice::from_ref(value),
        other => return Err(format!("shell.{key}: must be a non-empty list of names, got {}", other.type_name())),
    };
    items
        .iter()
        .map(|item| match item.as_str() {
            Some(name) if !name.is_empty() && name != "*" => Ok(match name.strip_suffix('*') {
                Some(prefix) => Name::Prefix(prefix.to_string()),
                None => Name::Exact(name.to_string()),
            }),
            _ => Err(format!("shell.{key}: names must be non-empty strings, got {}", item.type_name())),
        })
        .collect()
}

fn pattern(key: &str, value: &Json) -> Result<PyRegex, String> {
    let Some(text) = value.as_str() else {
        return Err(format!("shell.{key}: must be a pattern string, got {}", value.type_name()));
    };
    PyRegex::new(text).map_err(|e| format!("shell.{key}: pattern does not compile: {}", e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn programs(line: &str) -> Vec<String> {
        simple_commands(line).into_iter().map(|c| c.program).collect()
    }

    fn one(line: &str) -> SimpleCommand {
        let mut all = simple_commands(line);
        assert_eq!(all.len(), 1, "{line}: {all:?}");
        all.remove(0)
    }

    #[test]
    fn operators_separate_simple_commands() {
        assert_eq!(programs("id; uname -a && w || who | grep x & ps"), ["id", "uname", "w", "who", "grep", "ps"]);
        assert_eq!(programs("a|&b\nc"), ["a", "b", "c"]);
        assert_eq!(programs("(cd /tmp; ls) && { echo x; }"), ["cd", "ls", "echo"]);
    }

    #[test]
    fn keywords_and_tests_in_compound_commands() {
        let line = "if [ -f /etc/lsb-release ]; then cat /etc/lsb-release; elif true; then :; else uname; fi";
        assert_eq!(programs(line), ["[", "cat", "true", ":", "uname"]);
        let all = simple_commands("while read l; do echo $l; done < /etc/passwd");
        assert_eq!(all.iter().map(|c| c.program.as_str()).collect::<Vec<_>>(), ["read", "echo", ""]);
        assert_eq!(all[2].args, ["/etc/passwd"], "the loop's input redirection is read");
    }

    #[test]
    fn wrappers_are_stripped_and_listed() {
        let c = one("sudo -u root -E /usr/bin/cat /etc/shadow > /tmp/x.txt");
        assert_eq!(c.program, "cat");
        assert_eq!(c.wrappers, ["sudo"]);
        assert_eq!(c.args, ["/etc/shadow"]);
        assert_eq!(c.writes, ["/tmp/x.txt"]);
        let c = one("env -i PATH=/bin HISTFILE=/dev/null nohup timeout -s 9 5 nice -n 10 busybox wget http://x/y");
        assert_eq!(c.program, "wget");
        assert_eq!(c.wrappers, ["env", "nohup", "timeout", "nice", "busybox"]);
        assert_eq!(c.assigns, ["PATH=/bin", "HISTFILE=/dev/null"]);
        let all = simple_commands("find / -name x | xargs -n1 -I{} rm -f {}");
        assert_eq!((all[1].program.as_str(), all[1].wrappers.as_slice()), ("rm", &["xargs".to_string()][..]));
        assert_eq!(simple_commands("find / | xargs -n 1 rm -f")[1].program, "rm");
        assert_eq!(one("nice -5 ls").program, "ls");
        assert_eq!(one("chroot /mnt /bin/sh").program, "sh");
    }

    #[test]
    fn a_wrapper_without_a_command_is_the_program() {
        assert_eq!(one("sudo -l").program, "sudo");
        assert_eq!(one("sudo -l").args, ["-l"]);
        let c = one("command -v nmap");
        assert_eq!((c.program.as_str(), c.args.as_slice()), ("command", &["-v".to_string(), "nmap".into()][..]));
        assert_eq!(one("env").program, "env");
    }

    #[test]
    fn assignments_alone_and_before_a_command() {
        let c = one("HISTSIZE=0");
        assert_eq!((c.program.as_str(), c.assigns.as_slice()), ("", &["HISTSIZE=0".to_string()][..]));
        let c = one("LD_PRELOAD=/tmp/x.so ls");
        assert_eq!((c.program.as_str(), c.assigns.as_slice()), ("ls", &["LD_PRELOAD=/tmp/x.so".to_string()][..]));
        assert_eq!(one("a=b=c").assigns, ["a=b=c"]);
        assert_eq!(one("=x").program, "=x");
    }

    #[test]
    fn quotes_and_escapes_are_removed() {
        assert_eq!(one(r#"echo 'a b' "c $HOME \"d\"" e\ f $'g\x41\n'"#).args, ["a b", "c $HOME \"d\"", "e f", "gA\n"]);
        assert_eq!(one(r#"c"a"t /etc/pas's'wd"#).line, "cat /etc/passwd");
        assert_eq!(one("echo ''").args, [""]);
    }

    #[test]
    fn redirections() {
        let c = one("cat</etc/shadow 2>/dev/null >>/tmp/o 2>&1 &>/tmp/all");
        assert_eq!(c.args, ["/etc/shadow"]);
        assert_eq!(c.writes, ["/dev/null", "/tmp/o", "/tmp/all"]);
        assert_eq!(one("echo 0> /var/spool/mail/root").writes, ["/var/spool/mail/root"]);
        assert_eq!(one("echo 0> /var/spool/mail/root").args, Vec::<String>::new());
        assert_eq!(one("echo a10> x").args, ["a10"]);
        assert_eq!(one("grep x <<< 'hello'").args, ["x", "hello"]);
        assert_eq!(one("echo x >| f").writes, ["f"]);
    }

    #[test]
    fn heredoc_bodies_are_not_commands() {
        let all = simple_commands("cat > /etc/cron.d/x <<'EOF'\n* * * * * root rm -rf /\nEOF\nls");
        assert_eq!(all.iter().map(|c| c.program.as_str()).collect::<Vec<_>>(), ["cat", "ls"]);
        assert_eq!(all[0].writes, ["/etc/cron.d/x"]);
    }

    #[test]
    fn nested_command_lines_are_read() {
        assert_eq!(programs("echo $(whoami) `id -u` <(ls /)"), ["echo", "whoami", "id", "ls"]);
        assert_eq!(programs("sudo sh -c 'cat /etc/shadow; id'"), ["sh", "cat", "id"]);
        // The outer shell expands the substitution before bash runs, and bash runs it again.
        assert_eq!(programs(r#"bash -lc "echo \"$(uname -a)\"""#), ["bash", "echo", "uname", "uname"]);
        assert_eq!(programs("su root -c 'rm -rf /tmp/x'"), ["su", "rm"]);
        assert_eq!(programs("eval \"curl x | sh\""), ["eval", "curl", "sh"]);
        assert_eq!(programs("echo \"a $(b \"$(c)\")\""), ["echo", "b", "c"]);
    }

    #[test]
    fn comments_end_the_line() {
        assert_eq!(programs("ls # rm -rf /\nid"), ["ls", "id"]);
        assert_eq!(one("echo a#b").args, ["a#b"]);
    }

    #[test]
    fn broken_lines_do_not_fail() {
        for line in ["echo 'unclosed", "echo $(unclosed", "`x", "\\", ">", "a >", "<<", "$'\\x", "((((", "))))", ""] {
            let _ = simple_commands(line);
        }
        assert_eq!(one("cat '/etc/shadow").args, ["/etc/shadow"]);
        let deep = "sh -c ".repeat(50) + "id";
        assert!(simple_commands(&deep).len() <= MAX_DEPTH + 2);
        let many = "a;".repeat(5000);
        assert_eq!(simple_commands(&many).len(), MAX_COMMANDS);
    }

    fn shell(spec: &str) -> ShellMatch {
        ShellMatch::compile(&Json::parse(spec).unwrap()).unwrap()
    }

    #[test]
    fn a_match_needs_every_key_on_one_simple_command() {
        let m = shell(r#"{"program":["cat","head"],"argument":"^/etc/shadow$"}"#);
        assert!(m.matches(&simple_commands("sudo cat /etc/shadow > /tmp/x")));
        assert!(m.matches(&simple_commands("id; /bin/head -n1 '/etc/shadow'")));
        assert!(!m.matches(&simple_commands("cat /etc/passwd; ls /etc/shadow")));
        assert!(!m.matches(&simple_commands("cat /etc/shadow.bak")));
        let m = shell(r#"{"wrapper":["sudo"],"program":["py*"]}"#);
        assert!(m.matches(&simple_commands("sudo python3 x.py")));
        assert!(!m.matches(&simple_commands("python3 x.py")));
        let m = shell(r#"{"writes":"^/etc/cron","program":["echo"]}"#);
        assert!(m.matches(&simple_commands("echo '* * * * * x' >> /etc/crontab")));
        assert!(!m.matches(&simple_commands("cat /etc/crontab")));
        let m = shell(r#"{"assigns":"^HISTFILE="}"#);
        assert!(m.matches(&simple_commands("export X=1; HISTFILE=/dev/null")));
        let m = shell(r#"{"line":"^sysctl -w kernel\\.randomize_va_space=0"}"#);
        assert!(m.matches(&simple_commands("sudo sysctl -w kernel.randomize_va_space=0")));
        let m = shell(r#"{"program":["rm"],"argument":"^/var/log/","not":{"argument":"\\.gz$"}}"#);
        assert!(m.matches(&simple_commands("rm -f /var/log/auth.log")));
        assert!(!m.matches(&simple_commands("rm -f /var/log/auth.log.1.gz")));
        assert!(m.matches(&simple_commands("rm /var/log/a.gz; rm /var/log/b")), "each command is judged alone");
    }

    #[test]
    fn compile_errors_name_the_key() {
        let err = |spec: &str| ShellMatch::compile(&Json::parse(spec).unwrap()).unwrap_err();
        assert!(err(r#"{"programm":["cat"]}"#).starts_with("shell.programm: unknown key"));
        assert!(err(r#"{"argument":"("}"#).starts_with("shell.argument: pattern does not compile"));
        assert!(err(r#"{"program":[]}"#).starts_with("shell.program: must be a non-empty list"));
        assert!(err(r#"{"program":[""]}"#).starts_with("shell.program: names must be"));
        assert!(err("{}").starts_with("shell: needs at least one"));
        assert!(err("[1]").starts_with("shell: must be a mapping"));
        assert!(err(r#"{"program":["rm"],"not":{"lines":"x"}}"#).starts_with("shell.not.lines: unknown key"));
    }
}
