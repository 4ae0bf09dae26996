//! The statistics of an experiment summary: each variant against the control by a
//! two-proportion z-test (with the 95% confidence interval of the difference), and the
//! sample-ratio check (a chi-square test of the users seen against the planned split).

use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF};
use statrs::function::erf::erfc;

/// The z of a two-sided 95% interval.
const Z_95: f64 = 1.959_963_984_540_054;
/// Below this p-value a difference is called significant.
pub const SIGNIFICANCE: f64 = 0.05;
/// Below this p-value the users' split is called a sample-ratio mismatch (a strict level:
/// the check runs on every summary, and a false alarm sends people hunting for a bug).
pub const SAMPLE_RATIO_LEVEL: f64 = 0.001;

/// A variant against the control, rates in percent and differences in percentage points.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Uplift {
    /// The variant's rate minus the control's, in points.
    pub absolute_uplift: f64,
    /// The difference as a % of the control's rate; null when the control's rate is 0.
    pub relative_uplift: Option<f64>,
    /// The 95% confidence interval of the difference, in points.
    pub confidence_interval: [f64; 2],
    pub z_score: f64,
    /// Two-sided, of the pooled two-proportion z-test.
    pub p_value: f64,
    /// `p_value` < 0.05.
    pub significant: bool,
}

/// `x_v` of `n_v` users of a variant converted, against `x_c` of `n_c` of the control;
/// `None` while either has no users.
pub fn uplift(control: (u64, u64), variant: (u64, u64)) -> Option<Uplift> {
    let ((x_c, n_c), (x_v, n_v)) = (control, variant);
    if n_c == 0 || n_v == 0 {
        return None;
    }
    let (n_c, n_v, x_c, x_v) = (n_c as f64, n_v as f64, x_c as f64, x_v as f64);
    let (p_c, p_v) = (x_c / n_c, x_v / n_v);
    let difference = p_v - p_c;
    let spread = (p_c * (1.0 - p_c) / n_c + p_v * (1.0 - p_v) / n_v).sqrt();
    let pooled = (x_c + x_v) / (n_c + n_v);
    let pooled_spread = (pooled * (1.0 - pooled) * (1.0 / n_c + 1.0 / n_v)).sqrt();
    let z = if pooled_spread > 0.0 {
        difference / pooled_spread
    } else {
        0.0
    };
    let p_value = erfc(z.abs() / std::f64::consts::SQRT_2);
    Some(Uplift {
        absolute_uplift: round(100.0 * difference, 4),
        relative_uplift: (p_c > 0.0).then(|| round(100.0 * difference / p_c, 2)),
        confidence_interval: [
            round(100.0 * (difference - Z_95 * spread), 4),
            round(100.0 * (difference + Z_95 * spread), 4),
        ],
        z_score: round(z, 4),
        p_value: round(p_value, 6),
        significant: p_value < SIGNIFICANCE,
    })
}

/// The users seen in each variant against the planned split.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SampleRatio {
    pub chi_square: f64,
    pub p_value: f64,
    /// `p_value` < 0.001: the split differs from the plan more than chance explains, and the
    /// comparison should not be trusted until the cause is found.
    pub mismatch: bool,
}

/// `observed[i]` users where `weights[i]` were planned; `None` without users.
pub fn sample_ratio(observed: &[u64], weights: &[u32]) -> Option<SampleRatio> {
    let total: u64 = observed.iter().sum();
    let weight: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 || weight == 0 || observed.len() < 2 || observed.len() != weights.len() {
        return None;
    }
    let chi_square: f64 = observed
        .iter()
        .zip(weights)
        .map(|(&o, &w)| {
            let expected = total as f64 * f64::from(w) / weight as f64;
            (o as f64 - expected).powi(2) / expected
        })
        .sum();
    let freedom = (observed.len() - 1) as f64;
    let p_value = ChiSquared::new(freedom).ok()?.sf(chi_square);
    Some(SampleRatio {
        chi_square: round(chi_square, 4),
        p_value: round(p_value, 6),
        mismatch: p_value < SAMPLE_RATIO_LEVEL,
    })
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_proportions_as_textbooks_compute_them() {
        // 100 of 1000 against 130 of 1000.
        let u = uplift((100, 1000), (130, 1000)).unwrap();
        assert_eq!(u.absolute_uplift, 3.0);
        assert_eq!(u.relative_uplift, Some(30.0));
        assert!((u.z_score - 2.1027).abs() < 1e-4, "{u:?}");
        assert!((u.p_value - 0.035488).abs() < 1e-6, "{u:?}");
        assert!((u.confidence_interval[0] - 0.2068).abs() < 1e-4, "{u:?}");
        assert!((u.confidence_interval[1] - 5.7932).abs() < 1e-4, "{u:?}");
        assert!(u.significant);
        // Nothing to compare without users; equal rates are not significant.
        assert_eq!(uplift((0, 0), (1, 10)), None);
        let same = uplift((0, 10), (0, 10)).unwrap();
        assert_eq!(
            (same.p_value, same.significant, same.relative_uplift),
            (1.0, false, None)
        );
    }

    #[test]
    fn sample_ratio_is_a_chi_square_test_of_the_planned_split() {
        let even = sample_ratio(&[520, 480], &[1, 1]).unwrap();
        assert_eq!(even.chi_square, 1.6);
        assert!((even.p_value - 0.205903).abs() < 1e-6, "{even:?}");
        assert!(!even.mismatch);
        // Two degrees of freedom: the survival function is e^(-x/2).
        let three = sample_ratio(&[340, 330, 330], &[1, 1, 1]).unwrap();
        assert!((three.p_value - 0.904837).abs() < 1e-6, "{three:?}");
        // 600 against 400 where 1:1 was planned is a mismatch; where 3:2 was, it is not.
        assert!(sample_ratio(&[600, 400], &[1, 1]).unwrap().mismatch);
        assert!(!sample_ratio(&[600, 400], &[3, 2]).unwrap().mismatch);
        assert_eq!(sample_ratio(&[0, 0], &[1, 1]), None);
    }
}
