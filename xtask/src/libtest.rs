//! Reading the per-test lines that `cargo test` prints.

/// The result of one test as libtest reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestResult {
    Passed,
    Failed,
    Ignored,
}

/// Parses `test <name> ... <result>`; `None` for any other line.
pub fn parse_line(line: &str) -> Option<(String, TestResult)> {
    let rest = line.strip_prefix("test ")?;
    let (name, result) = rest.rsplit_once(" ... ")?;
    let result = match result.trim() {
        "ok" => TestResult::Passed,
        "FAILED" => TestResult::Failed,
        r if r.starts_with("ignored") => TestResult::Ignored,
        _ => return None,
    };
    Some((name.trim().to_string(), result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_lines_are_recognised() {
        assert_eq!(parse_line("test frames::tests::x ... ok"), Some(("frames::tests::x".into(), TestResult::Passed)));
        assert_eq!(parse_line("test a::b ... FAILED"), Some(("a::b".into(), TestResult::Failed)));
        assert_eq!(parse_line("test a::c ... ignored, needs root"), Some(("a::c".into(), TestResult::Ignored)));
        assert_eq!(
            parse_line("test src/lib.rs - f (line 3) ... ok"),
            Some(("src/lib.rs - f (line 3)".into(), TestResult::Passed))
        );
    }

    #[test]
    fn other_lines_are_not() {
        assert_eq!(parse_line("test result: ok. 3 passed; 0 failed; 0 ignored"), None);
        assert_eq!(parse_line("running 3 tests"), None);
        assert_eq!(parse_line("test a::b has been running for over 60 seconds"), None);
    }
}
