//! "Did you mean …?" suggestions for misspelt names.

/// The candidate closest to `name`, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(&str, f64)> = None;
    for c in candidates {
        if c == name {
            continue;
        }
        let d = strsim::damerau_levenshtein(name, c);
        let limit = (name.chars().count().max(c.chars().count()) / 3).max(1);
        let prefix = c.starts_with(name) || name.starts_with(c);
        if d <= limit || (prefix && name.len() >= 2) {
            let score = strsim::normalized_damerau_levenshtein(name, c);
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((c, score));
            }
        }
    }
    best.map(|(c, _)| c)
}

/// `help: did you mean `x`?` text, if there is a suggestion.
pub fn help(name: &str, candidates: impl IntoIterator<Item = impl AsRef<str>>) -> Option<String> {
    let owned: Vec<String> = candidates
        .into_iter()
        .map(|c| c.as_ref().to_string())
        .collect();
    did_you_mean(name, owned.iter().map(String::as_str)).map(|c| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let names = ["octconv", "conv", "avg_pool", "global_avg_pool"];
        assert_eq!(did_you_mean("octcov", names), Some("octconv"));
        assert_eq!(did_you_mean("avgpool", names), Some("avg_pool"));
        assert_eq!(did_you_mean("transformer", names), None);
    }
}
