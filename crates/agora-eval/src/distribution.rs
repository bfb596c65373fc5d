//! Label distributions (how often each toxicity score, strategy or judge verdict occurs),
//! in an order that does not depend on the input order, so that two reports over the same
//! labels print the same table.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// How often each label occurs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// Number of labels counted.
    pub total: u64,
    /// (label, count, share of `total`), one entry per distinct label: labels that read as
    /// finite numbers first, in numeric order ("2" before "10"), then the others in
    /// lexicographic (Unicode code point) order. Shares are count / total, so they add up to
    /// 1 (up to rounding) and there is no entry, hence no division by zero, when `total`
    /// is 0.
    pub counts: Vec<(String, u64, f64)>,
}

impl Distribution {
    /// Counts `labels`.
    pub fn from_labels<I, S>(labels: I) -> Distribution
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut counts_by_label: HashMap<String, u64> = HashMap::new();
        let mut total: u64 = 0;
        for label in labels {
            let label = label.as_ref();
            match counts_by_label.get_mut(label) {
                Some(count) => *count += 1,
                None => {
                    counts_by_label.insert(label.to_owned(), 1);
                }
            }
            total += 1;
        }
        let mut labels_and_counts: Vec<(String, u64)> = counts_by_label.into_iter().collect();
        labels_and_counts.sort_by(|(first, _), (second, _)| label_order(first, second));
        let counts = labels_and_counts
            .into_iter()
            .map(|(label, count)| {
                let share = count as f64 / total as f64;
                (label, count, share)
            })
            .collect();
        Distribution { total, counts }
    }

    /// The most frequent label; among equally frequent ones, the first in the
    /// distribution's order (so the smallest score, or the alphabetically first label).
    /// `None` when nothing was counted.
    pub fn mode(&self) -> Option<&str> {
        let mut best: Option<(&str, u64)> = None;
        for (label, count, _) in &self.counts {
            if best.is_none_or(|(_, best_count)| *count > best_count) {
                best = Some((label, *count));
            }
        }
        best.map(|(label, _)| label)
    }
}

/// Numeric labels first, numerically (ties such as "1" and "1.0" by their text), then the
/// rest by their text.
fn label_order(first: &str, second: &str) -> Ordering {
    match (numeric_value(first), numeric_value(second)) {
        (Some(first_number), Some(second_number)) => {
            first_number.total_cmp(&second_number).then_with(|| first.cmp(second))
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => first.cmp(second),
    }
}

/// The label as a finite number, if it reads as one ("NaN" and "inf" do not count).
fn numeric_value(label: &str) -> Option<f64> {
    label.trim().parse::<f64>().ok().filter(|number| number.is_finite()).map(|number| number + 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expect` lists (label, count) in the expected order; shares are checked against it.
    fn check(labels: &[&str], expect: &[(&str, u64)], expect_mode: Option<&str>) {
        let distribution = Distribution::from_labels(labels);
        let got: Vec<(&str, u64)> =
            distribution.counts.iter().map(|(label, count, _)| (label.as_str(), *count)).collect();
        assert_eq!(got, expect, "{labels:?}");
        assert_eq!(distribution.total, labels.len() as u64);
        for (label, count, share) in &distribution.counts {
            assert_eq!(*share, *count as f64 / labels.len() as f64, "share of {label}");
        }
        assert_eq!(distribution.mode(), expect_mode, "{labels:?}");
    }

    #[test]
    fn numeric_labels_sort_numerically() {
        check(&["10", "2", "3", "2", "1", "10", "2"], &[("1", 1), ("2", 3), ("3", 1), ("10", 2)], Some("2"));
        check(&["-1", "0.5", "-2.5", "0.5"], &[("-2.5", 1), ("-1", 1), ("0.5", 2)], Some("0.5"));
        // Equal numbers written differently stay apart, ordered by their text.
        check(&["1.0", "1", "01"], &[("01", 1), ("1", 1), ("1.0", 1)], Some("01"));
    }

    #[test]
    fn other_labels_sort_alphabetically_after_numbers() {
        check(
            &["toxic", "neutral", "5", "Neutral", "unparsed", "neutral", "NaN", "inf"],
            &[
                ("5", 1),
                ("NaN", 1),
                ("Neutral", 1),
                ("inf", 1),
                ("neutral", 2),
                ("toxic", 1),
                ("unparsed", 1),
            ],
            Some("neutral"),
        );
    }

    #[test]
    fn the_mode_breaks_ties_by_order() {
        check(&["b", "a", "b", "a"], &[("a", 2), ("b", 2)], Some("a"));
        check(&["7", "3", "7", "3", "5"], &[("3", 2), ("5", 1), ("7", 2)], Some("3"));
    }

    #[test]
    fn order_does_not_depend_on_input_order() {
        let forward = Distribution::from_labels(["c", "a", "2", "b", "1", "a"]);
        let backward = Distribution::from_labels(["a", "1", "b", "2", "a", "c"]);
        assert_eq!(forward, backward);
    }

    #[test]
    fn edge_cases() {
        check(&[], &[], None);
        check(&["only"], &[("only", 1)], Some("only"));
        check(&["4", "4", "4"], &[("4", 3)], Some("4"));
        check(&[""], &[("", 1)], Some(""));
    }

    #[test]
    fn owned_strings_and_json() {
        let distribution = Distribution::from_labels(vec![String::from("yes"), String::from("no")]);
        assert_eq!(
            serde_json::to_string(&distribution).unwrap(),
            r#"{"total":2,"counts":[["no",1,0.5],["yes",1,0.5]]}"#
        );
    }
}
