//! Inter-annotator agreement: Krippendorff's alpha for nominal, ordinal, interval and ratio
//! data with missing values, computed through the coincidence matrix as in Krippendorff
//! (2011), "Computing Krippendorff's Alpha-Reliability". Alpha only depends on the multiset
//! of values each unit received, so callers pass those and never a coder-by-unit matrix
//! with holes: a missing value is simply not there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Level of measurement of the values: it picks the distance between two values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Categories: two values agree or they do not.
    Nominal,
    /// Ranks: the distance between two values grows with how many observed values lie
    /// between them (their frequencies, not their magnitudes).
    Ordinal,
    /// Differences are meaningful: squared difference.
    Interval,
    /// Differences relative to an absolute zero: squared difference over the sum. Negative
    /// values have no meaning here and make alpha undefined.
    Ratio,
}

/// Krippendorff's alpha and how much data it rests on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Alpha {
    /// 1 is perfect agreement, 0 agreement at chance level, below 0 systematic disagreement.
    pub alpha: f64,
    /// Units with at least two values (the only ones that say anything about agreement).
    pub units: usize,
    /// Values in those units (Krippendorff's n.. , the total of the coincidence matrix).
    pub values: usize,
}

/// Krippendorff's alpha of `units`, where `units[i]` holds every value unit i received from
/// any coder (missing ones simply absent).
///
/// Units with fewer than 2 values are not pairable and ignored. `None` when alpha is
/// undefined: no pairable unit, no variation at all (expected disagreement 0), a value that
/// is NaN or infinite, or a negative value at [`Level::Ratio`]. NaN is not a marker for a
/// missing value here (as it is in Python's `krippendorff`): leave missing values out.
///
/// The cost is linear in the number of values plus quadratic in the number of *distinct*
/// values (the expected disagreement sums over pairs of them), and the memory linear.
pub fn krippendorff_alpha(units: &[Vec<f64>], level: Level) -> Option<Alpha> {
    let all_values_usable =
        units.iter().flatten().all(|value| value.is_finite() && !(level == Level::Ratio && *value < 0.0));
    if !all_values_usable {
        return None;
    }
    let pairable: Vec<&[f64]> = units.iter().map(Vec::as_slice).filter(|values| values.len() >= 2).collect();
    if pairable.is_empty() {
        return None;
    }

    // The distinct values, sorted, so that a value is an index into the coincidence
    // matrix and ordinal distances can walk the values in rank order.
    let mut distinct: Vec<f64> =
        pairable.iter().flat_map(|values| values.iter().map(|v| canonical(*v))).collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();

    let unit_value_counts: Vec<Vec<(usize, f64)>> =
        pairable.iter().map(|values| value_counts(values, &distinct)).collect();

    // The margins of the coincidence matrix: each row of a unit's coincidences adds up to
    // how often that unit received the value, so n_c is just a count over pairable units.
    let mut value_totals = vec![0.0; distinct.len()];
    for counts in &unit_value_counts {
        for &(value_index, count) in counts {
            value_totals[value_index] += count;
        }
    }
    let total_values: usize = pairable.iter().map(|values| values.len()).sum();
    let total = total_values as f64;

    let distance = Distance::new(level, &distinct, &value_totals);

    // Observed disagreement: the coincidence matrix weighted by the distances. A unit with
    // m values contributes n_uc * n_uk / (m - 1) coincidences to cell (c, k); the diagonal
    // needs no correction because every distance from a value to itself is 0. The matrix
    // itself is never stored: only its weighted sum is needed.
    let mut observed = 0.0;
    for counts in &unit_value_counts {
        let unit_total: f64 = counts.iter().map(|(_, count)| count).sum();
        let mut unit_sum = 0.0;
        for &(first, first_count) in counts {
            for &(second, second_count) in counts {
                unit_sum += first_count * second_count * distance.between(first, second);
            }
        }
        observed += unit_sum / (unit_total - 1.0);
    }

    // Expected disagreement: the coincidences expected by chance, n_c * n_k / (n - 1) off
    // the diagonal, weighted by the same distances.
    let mut expected = 0.0;
    for (first, first_total) in value_totals.iter().enumerate() {
        for (second, second_total) in value_totals.iter().enumerate() {
            expected += first_total * second_total * distance.between(first, second);
        }
    }
    expected /= total - 1.0;

    if expected <= 0.0 || !expected.is_finite() {
        return None;
    }
    let alpha = 1.0 - observed / expected;
    alpha.is_finite().then_some(Alpha { alpha, units: pairable.len(), values: total_values })
}

/// Krippendorff's alpha for nominal labels: each distinct string becomes one value, then
/// [`krippendorff_alpha`] at [`Level::Nominal`].
pub fn krippendorff_alpha_labels(units: &[Vec<String>]) -> Option<Alpha> {
    let mut label_values: BTreeMap<&str, f64> = BTreeMap::new();
    for label in units.iter().flatten() {
        let next_value = label_values.len() as f64;
        label_values.entry(label.as_str()).or_insert(next_value);
    }
    let numeric_units: Vec<Vec<f64>> = units
        .iter()
        .map(|labels| labels.iter().filter_map(|label| label_values.get(label.as_str()).copied()).collect())
        .collect();
    krippendorff_alpha(&numeric_units, Level::Nominal)
}

/// -0.0 and 0.0 are one value (`total_cmp` would tell them apart).
fn canonical(value: f64) -> f64 {
    value + 0.0
}

/// How often a unit received each distinct value: (index into `distinct`, count).
fn value_counts(values: &[f64], distinct: &[f64]) -> Vec<(usize, f64)> {
    let mut counts: BTreeMap<usize, f64> = BTreeMap::new();
    for value in values {
        let value = canonical(*value);
        // Every value of a pairable unit is in `distinct`, which was built from them.
        if let Ok(index) = distinct.binary_search_by(|probe| probe.total_cmp(&value)) {
            *counts.entry(index).or_insert(0.0) += 1.0;
        }
    }
    counts.into_iter().collect()
}

/// The distance (Krippendorff's metric difference, squared) between two distinct values,
/// given by their indices in the sorted list of distinct values.
struct Distance<'a> {
    level: Level,
    distinct: &'a [f64],
    /// `cumulative[i]` = n_0 + ... + n_(i-1), for ordinal distances.
    cumulative: Vec<f64>,
    value_totals: &'a [f64],
}

impl<'a> Distance<'a> {
    fn new(level: Level, distinct: &'a [f64], value_totals: &'a [f64]) -> Self {
        let mut cumulative = Vec::with_capacity(value_totals.len() + 1);
        let mut running = 0.0;
        cumulative.push(running);
        for total in value_totals {
            running += total;
            cumulative.push(running);
        }
        Distance { level, distinct, cumulative, value_totals }
    }

    fn between(&self, first: usize, second: usize) -> f64 {
        if first == second {
            return 0.0;
        }
        let (first_value, second_value) = (self.distinct[first], self.distinct[second]);
        match self.level {
            Level::Nominal => 1.0,
            Level::Ordinal => {
                let (low, high) = (first.min(second), first.max(second));
                // The values ranked from c to k inclusive, minus half of each end's own
                // frequency (Krippendorff 2011, ordinal metric).
                let between = self.cumulative[high + 1] - self.cumulative[low];
                let ends = (self.value_totals[low] + self.value_totals[high]) / 2.0;
                (between - ends).powi(2)
            }
            Level::Interval => (first_value - second_value).powi(2),
            Level::Ratio => {
                let sum = first_value + second_value;
                // Both zero can only happen on the diagonal, handled above; kept for safety.
                if sum == 0.0 { 0.0 } else { ((first_value - second_value) / sum).powi(2) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// Coder rows (null = missing) to the values of each unit, the shape alpha takes.
    fn units_of<T: Clone>(rows: &[Vec<Option<T>>]) -> Vec<Vec<T>> {
        let unit_count = rows.iter().map(Vec::len).max().unwrap_or(0);
        (0..unit_count)
            .map(|unit| rows.iter().filter_map(|row| row.get(unit).cloned().flatten()).collect())
            .collect()
    }

    fn check(units: &[Vec<f64>], level: Level, expect: Option<(f64, usize, usize)>) {
        let got = krippendorff_alpha(units, level);
        match (got, expect) {
            (None, None) => {}
            (Some(got), Some((alpha, pairable_units, pairable_values))) => {
                assert!(
                    (got.alpha - alpha).abs() <= 1e-9,
                    "{level:?}: alpha {} != expected {alpha} for {units:?}",
                    got.alpha
                );
                assert_eq!((got.units, got.values), (pairable_units, pairable_values), "{units:?}");
            }
            (got, expect) => panic!("{level:?}: got {got:?}, expected {expect:?} for {units:?}"),
        }
    }

    fn golden() -> Value {
        serde_json::from_str(include_str!("../test_data/alpha.json")).unwrap()
    }

    #[test]
    fn numeric_goldens_from_the_krippendorff_package() {
        let golden = golden();
        let cases = golden["numeric"].as_array().unwrap();
        assert!(cases.len() >= 5);
        for case in cases {
            let rows: Vec<Vec<Option<f64>>> =
                serde_json::from_value(case["reliability_data"].clone()).unwrap();
            let units = units_of(&rows);
            let pairable_units = case["pairable_units"].as_u64().unwrap() as usize;
            let pairable_values = case["pairable_values"].as_u64().unwrap() as usize;
            for (level, name) in [
                (Level::Nominal, "nominal"),
                (Level::Ordinal, "ordinal"),
                (Level::Interval, "interval"),
                (Level::Ratio, "ratio"),
            ] {
                let alpha = case["alpha"][name].as_f64().unwrap();
                check(&units, level, Some((alpha, pairable_units, pairable_values)));
            }
        }
    }

    #[test]
    fn label_goldens_from_the_krippendorff_package() {
        let golden = golden();
        for case in golden["labels"].as_array().unwrap() {
            let rows: Vec<Vec<Option<String>>> =
                serde_json::from_value(case["reliability_data"].clone()).unwrap();
            let got = krippendorff_alpha_labels(&units_of(&rows)).unwrap();
            let alpha = case["alpha"].as_f64().unwrap();
            assert!((got.alpha - alpha).abs() <= 1e-9, "{}: {} != {alpha}", case["name"], got.alpha);
            assert_eq!(got.units as u64, case["pairable_units"].as_u64().unwrap());
            assert_eq!(got.values as u64, case["pairable_values"].as_u64().unwrap());
        }
    }

    #[test]
    fn the_papers_rounded_figures() {
        let golden = golden();
        let rows: Vec<Vec<Option<f64>>> =
            serde_json::from_value(golden["numeric"][0]["reliability_data"].clone()).unwrap();
        let units = units_of(&rows);
        for (level, printed) in [
            (Level::Nominal, 0.743),
            (Level::Ordinal, 0.815),
            (Level::Interval, 0.849),
            (Level::Ratio, 0.797),
        ] {
            let alpha = krippendorff_alpha(&units, level).unwrap().alpha;
            assert!((alpha - printed).abs() < 5e-4, "{level:?}: {alpha} vs the paper's {printed}");
        }
    }

    #[test]
    fn hand_computed_cases() {
        // Two coders, perfect agreement with variation: alpha is exactly 1.
        check(&[vec![1.0, 1.0], vec![2.0, 2.0], vec![3.0, 3.0]], Level::Interval, Some((1.0, 3, 6)));
        // Two units, two values each, fully crossed: o = [[0,2],[2,0]], n = 4,
        // D_o = 4/4 = 1, D_e = 2*2*2/(4*3) = 2/3, alpha = 1 - 3/2.
        check(&[vec![0.0, 1.0], vec![1.0, 0.0]], Level::Nominal, Some((-0.5, 2, 4)));
        // A unit seen once is not pairable, whatever its value.
        check(&[vec![1.0, 1.0], vec![2.0, 2.0], vec![9.0]], Level::Nominal, Some((1.0, 2, 4)));
        // -0.0 and 0.0 are the same value.
        check(&[vec![0.0, -0.0], vec![1.0, 1.0]], Level::Nominal, Some((1.0, 2, 4)));
        // A single unit with variation is defined (alpha 0: its disagreement is all there
        // is to expect); units seen once only are not.
        check(&[vec![1.0, 2.0]], Level::Interval, Some((0.0, 1, 2)));
        // Negative values are fine below ratio level: observed 2*1*1*4 = 8, expected 2*(4 + 18 + 2)/3 = 16.
        check(&[vec![-1.0, 1.0], vec![2.0, 2.0]], Level::Interval, Some((0.5, 2, 4)));
        // Ratio: 1 against 3 differ by (2/4)^2 = 1/4 inside the first unit (counted in both
        // orders). By chance, the pairs (1,3), (1,5), (3,5) are at distances 1/4, 4/9, 1/16
        // with weights n_c * n_k = 1, 2, 2, in both orders, over n - 1 = 3.
        check(
            &[vec![1.0, 3.0], vec![5.0, 5.0]],
            Level::Ratio,
            Some((1.0 - (2.0 * 0.25) / (2.0 * (0.25 + 2.0 * 4.0 / 9.0 + 2.0 / 16.0) / 3.0), 2, 4)),
        );
    }

    #[test]
    fn undefined_or_rejected_inputs_are_none() {
        check(&[], Level::Nominal, None);
        check(&[vec![], vec![]], Level::Nominal, None);
        // Units seen once only say nothing about agreement.
        check(&[vec![1.0], vec![2.0], vec![3.0]], Level::Ordinal, None);
        // No variation at all: expected disagreement 0.
        for level in [Level::Nominal, Level::Ordinal, Level::Interval, Level::Ratio] {
            check(&[vec![4.0, 4.0, 4.0], vec![4.0, 4.0]], level, None);
        }
        // Non-finite values are rejected rather than propagated.
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            check(&[vec![1.0, bad], vec![2.0, 2.0]], Level::Interval, None);
        }
        // Ratio data have an absolute zero: negative values are meaningless.
        check(&[vec![-1.0, 1.0], vec![2.0, 2.0]], Level::Ratio, None);
        assert_eq!(krippendorff_alpha_labels(&[vec!["a".into()], vec![]]), None);
    }

    #[test]
    fn level_is_snake_case_in_json() {
        assert_eq!(serde_json::to_string(&Level::Interval).unwrap(), "\"interval\"");
        assert_eq!(serde_json::from_str::<Level>("\"ordinal\"").unwrap(), Level::Ordinal);
    }
}
