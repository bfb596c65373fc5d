//! Means with Student-t confidence intervals, for judge scores and other per-item numbers,
//! and the Student-t quantile they need: written here (regularized incomplete beta by its
//! continued fraction, then a Newton search kept inside a bracket) so that agora-eval
//! needs no numerical library.

use serde::{Deserialize, Serialize};

/// Mean, spread and a two-sided Student-t confidence interval of a sample.
///
/// With a single value there is no spread and no interval: `sd`, `sem`, `ci_low` and
/// `ci_high` are `None` (serialized as `null`), never NaN. With two or more values they
/// are all `Some`; all values equal gives `sd = 0` and an interval of zero width.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (divides by n - 1).
    pub sd: Option<f64>,
    /// Standard error of the mean, sd / sqrt(n).
    pub sem: Option<f64>,
    /// The confidence level the interval was built for, e.g. 0.95.
    pub confidence: f64,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

/// Summarizes `values` with a two-sided `confidence` interval (0.95 for a 95% interval):
/// mean ± t(1 - (1 - confidence) / 2, n - 1) * sem.
///
/// `None` when there is nothing to summarize or the input cannot be summarized: no values,
/// a NaN or infinite value, a confidence outside (0, 1), or values so large that the
/// arithmetic overflows.
pub fn summarize(values: &[f64], confidence: f64) -> Option<Summary> {
    if values.is_empty() || !(confidence > 0.0 && confidence < 1.0) {
        return None;
    }
    if !values.iter().all(|value| value.is_finite()) {
        return None;
    }
    let count = values.len() as f64;
    let first_mean = values.iter().sum::<f64>() / count;
    // A second pass over the residuals removes most of the rounding error of the plain
    // sum, which matters when the values share a large offset.
    let mean = first_mean + values.iter().map(|value| value - first_mean).sum::<f64>() / count;
    if !mean.is_finite() {
        return None;
    }
    if values.len() == 1 {
        return Some(Summary { n: 1, mean, sd: None, sem: None, confidence, ci_low: None, ci_high: None });
    }

    let squared_deviations: f64 = values.iter().map(|value| (value - mean).powi(2)).sum();
    let sd = (squared_deviations / (count - 1.0)).sqrt();
    let sem = sd / count.sqrt();
    let t = student_t_quantile(1.0 - (1.0 - confidence) / 2.0, count - 1.0)?;
    let half_width = t * sem;
    let (ci_low, ci_high) = (mean - half_width, mean + half_width);
    if ![sd, sem, ci_low, ci_high].iter().all(|number| number.is_finite()) {
        return None;
    }
    Some(Summary {
        n: values.len(),
        mean,
        sd: Some(sd),
        sem: Some(sem),
        confidence,
        ci_low: Some(ci_low),
        ci_high: Some(ci_high),
    })
}

/// The `probability` quantile of Student's t distribution with `degrees_of_freedom`
/// (any positive real): the t with P(T <= t) = probability. `None` when the probability is
/// not strictly between 0 and 1, the degrees of freedom are not positive and finite, or
/// the quantile is too large for an f64.
pub fn student_t_quantile(probability: f64, degrees_of_freedom: f64) -> Option<f64> {
    if !(probability > 0.0 && probability < 1.0) {
        return None;
    }
    if !(degrees_of_freedom > 0.0 && degrees_of_freedom.is_finite()) {
        return None;
    }
    if probability == 0.5 {
        return Some(0.0);
    }
    // The distribution is symmetric: search the positive t whose upper tail is the smaller
    // of the two tail probabilities, then give it the sign of the side asked for.
    let (tail, sign) = if probability > 0.5 { (1.0 - probability, 1.0) } else { (probability, -1.0) };
    let magnitude = positive_t_with_upper_tail(tail, degrees_of_freedom)?;
    Some(sign * magnitude)
}

/// The t > 0 with P(T > t) = `tail` (0 < tail < 1/2).
fn positive_t_with_upper_tail(tail: f64, degrees_of_freedom: f64) -> Option<f64> {
    // Bracket the root: the upper tail falls from 1/2 at t = 0 towards 0.
    let mut low = 0.0;
    let mut high = 1.0;
    while student_t_upper_tail(high, degrees_of_freedom) > tail {
        low = high;
        high *= 2.0;
        if !high.is_finite() || high > 1e300 {
            return None;
        }
    }

    // Newton's method on upper_tail(t) - tail, whose derivative is -density(t). The upper
    // tail is convex for t > 0, so a step from the left of the root lands between that
    // point and the root; any step that would leave the bracket is replaced by bisection,
    // so the search cannot diverge.
    let mut t = low;
    for _ in 0..200 {
        let excess = student_t_upper_tail(t, degrees_of_freedom) - tail;
        if excess == 0.0 {
            return Some(t);
        }
        if excess > 0.0 {
            low = t;
        } else {
            high = t;
        }
        let density = student_t_density(t, degrees_of_freedom);
        let newton = t + excess / density;
        let next = if density > 0.0 && newton > low && newton < high { newton } else { (low + high) / 2.0 };
        if (next - t).abs() <= 4.0 * f64::EPSILON * next.abs() || high - low <= 4.0 * f64::EPSILON * high {
            return Some(next);
        }
        t = next;
    }
    Some(t)
}

/// P(T > t) for t >= 0: half the regularized incomplete beta I_x(df/2, 1/2) at
/// x = df / (df + t^2).
fn student_t_upper_tail(t: f64, degrees_of_freedom: f64) -> f64 {
    let t_squared = t * t;
    let denominator = degrees_of_freedom + t_squared;
    // x and 1 - x computed apart, so neither loses digits to a subtraction from 1.
    let x = degrees_of_freedom / denominator;
    let one_minus_x = t_squared / denominator;
    0.5 * regularized_incomplete_beta(degrees_of_freedom / 2.0, 0.5, x, one_minus_x)
}

fn student_t_density(t: f64, degrees_of_freedom: f64) -> f64 {
    let log_density = ln_gamma((degrees_of_freedom + 1.0) / 2.0)
        - ln_gamma(degrees_of_freedom / 2.0)
        - 0.5 * (degrees_of_freedom * std::f64::consts::PI).ln()
        - (degrees_of_freedom + 1.0) / 2.0 * (t * t / degrees_of_freedom).ln_1p();
    log_density.exp()
}

/// I_x(a, b), the regularized incomplete beta function, for a, b > 0 and x in [0, 1];
/// `one_minus_x` is 1 - x, passed in by callers that can compute it without rounding.
fn regularized_incomplete_beta(a: f64, b: f64, x: f64, one_minus_x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if one_minus_x <= 0.0 {
        return 1.0;
    }
    // The continued fraction converges fast only left of the mean of the Beta(a, b)
    // distribution; on the right, use I_x(a, b) = 1 - I_(1-x)(b, a).
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - regularized_incomplete_beta(b, a, one_minus_x, x);
    }
    let log_prefactor = a * x.ln() + b * one_minus_x.ln() - ln_beta(a, b);
    log_prefactor.exp() * incomplete_beta_continued_fraction(a, b, x) / a
}

/// The continued fraction of I_x(a, b) (1 / (1 + d1 / (1 + d2 / (1 + ...))) with the
/// even and odd coefficients d_2m, d_2m+1), evaluated front to back with the modified
/// Lentz method so that no partial numerator or denominator can overflow.
fn incomplete_beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let guard = |value: f64| if value.abs() < TINY { TINY.copysign(value) } else { value };

    // The first term (m = 0, odd coefficient d_1) is folded into the start values.
    let mut denominator = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0));
    let mut numerator = 1.0;
    let mut result = denominator;
    for m in 1..1000 {
        let m = m as f64;
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        let odd = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        for coefficient in [even, odd] {
            denominator = 1.0 / guard(1.0 + coefficient * denominator);
            numerator = guard(1.0 + coefficient / numerator);
            result *= denominator * numerator;
        }
        if (denominator * numerator - 1.0).abs() <= f64::EPSILON {
            break;
        }
    }
    result
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// ln Γ(x) for x > 0 by the Lanczos approximation (g = 7, nine terms; relative error near
/// 1e-15), shifted up by one below 1/2 where the approximation is not meant to be used.
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return ln_gamma(x + 1.0) - x.ln();
    }
    let z = x - 1.0;
    let mut series = COEFFICIENTS[0];
    for (index, coefficient) in COEFFICIENTS.iter().enumerate().skip(1) {
        series += coefficient / (z + index as f64);
    }
    let shifted = z + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (z + 0.5) * shifted.ln() - shifted + series.ln()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn close(got: f64, expected: f64, tolerance: f64) -> bool {
        (got - expected).abs() <= tolerance * expected.abs().max(1.0)
    }

    fn check(values: &[f64], confidence: f64, expect: Option<Summary>) {
        let got = summarize(values, confidence);
        match (got, expect) {
            (None, None) => {}
            (Some(got), Some(expect)) => {
                assert_eq!((got.n, got.confidence), (expect.n, expect.confidence), "{values:?}");
                assert!(close(got.mean, expect.mean, 1e-12), "mean {} != {}", got.mean, expect.mean);
                for (field, got, expect) in [
                    ("sd", got.sd, expect.sd),
                    ("sem", got.sem, expect.sem),
                    ("ci_low", got.ci_low, expect.ci_low),
                    ("ci_high", got.ci_high, expect.ci_high),
                ] {
                    match (got, expect) {
                        (None, None) => {}
                        (Some(got), Some(expect)) => {
                            assert!(close(got, expect, 1e-9), "{field}: {got} != {expect} for {values:?}")
                        }
                        _ => panic!("{field}: got {got:?}, expected {expect:?} for {values:?}"),
                    }
                }
            }
            (got, expect) => panic!("got {got:?}, expected {expect:?} for {values:?}"),
        }
    }

    #[test]
    fn t_quantiles_match_scipy() {
        let golden: Value = serde_json::from_str(include_str!("../test_data/t_quantiles.json")).unwrap();
        let probabilities: Vec<f64> = serde_json::from_value(golden["probabilities"].clone()).unwrap();
        let rows = golden["rows"].as_array().unwrap();
        assert!(rows.len() >= 200);
        let mut worst = 0.0_f64;
        for row in rows {
            let degrees_of_freedom = row["df"].as_f64().unwrap();
            let quantiles: Vec<f64> = serde_json::from_value(row["quantiles"].clone()).unwrap();
            for (probability, expected) in probabilities.iter().zip(quantiles) {
                let got = student_t_quantile(*probability, degrees_of_freedom).unwrap();
                if degrees_of_freedom <= 200.0 && degrees_of_freedom.fract() == 0.0 {
                    worst = worst.max((got - expected).abs());
                }
                assert!(
                    (got - expected).abs() <= 1e-8,
                    "t.ppf({probability}, {degrees_of_freedom}): {got} != scipy's {expected}"
                );
                // The lower quantile is the mirror image.
                let mirrored = student_t_quantile(1.0 - probability, degrees_of_freedom).unwrap();
                assert!((mirrored + expected).abs() <= 1e-8, "{mirrored} != -{expected}");
            }
        }
        eprintln!("largest difference from scipy for df 1..200: {worst:e}");
    }

    #[test]
    fn t_quantile_special_values() {
        // df = 1 is the Cauchy distribution: quantile tan(pi (p - 1/2)).
        for probability in [0.6, 0.75, 0.9, 0.999] {
            let cauchy = (std::f64::consts::PI * (probability - 0.5)).tan();
            assert!(close(student_t_quantile(probability, 1.0).unwrap(), cauchy, 1e-12));
        }
        // df = 2 has the closed form (2p - 1) sqrt(2 / (4p(1 - p))).
        for probability in [0.55_f64, 0.8, 0.99] {
            let exact = (2.0 * probability - 1.0) * (2.0 / (4.0 * probability * (1.0 - probability))).sqrt();
            assert!(close(student_t_quantile(probability, 2.0).unwrap(), exact, 1e-12));
        }
        assert_eq!(student_t_quantile(0.5, 3.0), Some(0.0));
        for (probability, degrees_of_freedom) in [
            (0.0, 3.0),
            (1.0, 3.0),
            (f64::NAN, 3.0),
            (1.5, 3.0),
            (0.9, 0.0),
            (0.9, -1.0),
            (0.9, f64::NAN),
            (0.9, f64::INFINITY),
        ] {
            assert_eq!(student_t_quantile(probability, degrees_of_freedom), None);
        }
    }

    #[test]
    fn summaries_match_scipy() {
        let golden: Value = serde_json::from_str(include_str!("../test_data/summaries.json")).unwrap();
        for case in golden.as_array().unwrap() {
            let values: Vec<f64> = serde_json::from_value(case["values"].clone()).unwrap();
            let field = |name: &str| case[name].as_f64();
            check(
                &values,
                field("confidence").unwrap(),
                Some(Summary {
                    n: values.len(),
                    mean: field("mean").unwrap(),
                    sd: field("sd"),
                    sem: field("sem"),
                    confidence: field("confidence").unwrap(),
                    ci_low: field("ci_low"),
                    ci_high: field("ci_high"),
                }),
            );
        }
    }

    #[test]
    fn edge_cases() {
        let single =
            Summary { n: 1, mean: 4.5, sd: None, sem: None, confidence: 0.95, ci_low: None, ci_high: None };
        check(&[4.5], 0.95, Some(single));
        let constant = Summary {
            n: 3,
            mean: 2.0,
            sd: Some(0.0),
            sem: Some(0.0),
            confidence: 0.9,
            ci_low: Some(2.0),
            ci_high: Some(2.0),
        };
        check(&[2.0, 2.0, 2.0], 0.9, Some(constant));
        check(&[], 0.95, None);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            check(&[1.0, bad, 3.0], 0.95, None);
        }
        for bad_confidence in [0.0, 1.0, -0.5, 95.0, f64::NAN] {
            check(&[1.0, 2.0, 3.0], bad_confidence, None);
        }
        // Finite values whose sum overflows.
        check(&[f64::MAX, f64::MAX], 0.95, None);
    }

    #[test]
    fn a_single_value_serializes_without_nan() {
        let json = serde_json::to_string(&summarize(&[3.0], 0.95).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"n":1,"mean":3.0,"sd":null,"sem":null,"confidence":0.95,"ci_low":null,"ci_high":null}"#
        );
    }

    #[test]
    fn ln_gamma_at_known_points() {
        for (x, expected) in [
            (0.5, 0.5 * std::f64::consts::PI.ln()),
            (1.0, 0.0),
            (2.0, 0.0),
            (5.0, 24.0_f64.ln()),
            (0.25, 1.288_022_524_698_077_5),
            (100.0, 359.134_205_369_575_4),
        ] {
            assert!(close(ln_gamma(x), expected, 1e-13), "ln_gamma({x}) = {} != {expected}", ln_gamma(x));
        }
    }
}
