//! TEMPORARY placeholder until the Python-semantics translator lands.
#[derive(Clone, Debug)]
pub struct PyRegex {
    src: String,
    re: fancy_regex::Regex,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyRegexError {
    pub pattern: String,
    pub message: String,
}
impl std::fmt::Display for PyRegexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for PyRegexError {}
impl PyRegex {
    pub fn new(pattern: &str) -> Result<PyRegex, PyRegexError> {
        fancy_regex::Regex::new(pattern)
            .map(|re| PyRegex { src: pattern.to_string(), re })
            .map_err(|e| PyRegexError { pattern: pattern.to_string(), message: e.to_string() })
    }
    pub fn is_match(&self, text: &str) -> bool {
        self.re.is_match(text).unwrap_or(false)
    }
    pub fn find(&self, text: &str) -> Option<String> {
        self.re.find(text).ok().flatten().map(|m| m.as_str().to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.src
    }
    pub fn plain_translation(&self) -> Option<&str> {
        None
    }
}
