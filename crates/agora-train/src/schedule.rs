//! Learning-rate schedules, with the same step arithmetic as transformers'
//! `get_linear_schedule_with_warmup`, `get_cosine_schedule_with_warmup` and
//! `get_constant_schedule_with_warmup`: optimizer step `s` (from 0) uses
//! `learning_rate * factor(s)`.

use crate::config::{ScheduleConfig, ScheduleKind};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// `warmup_steps` wins over `warmup_ratio`; a ratio is rounded up, as the Trainer does.
    pub fn new(config: &ScheduleConfig, peak: f64, total_steps: usize) -> Schedule {
        let warmup_steps = if config.warmup_steps > 0 {
            config.warmup_steps
        } else {
            (config.warmup_ratio * total_steps as f64).ceil() as usize
        };
        Schedule { kind: config.kind, peak, warmup_steps, total_steps }
    }

    /// The learning rate of optimizer step `step` (0-based).
    pub fn learning_rate(&self, step: usize) -> f64 {
        self.peak * self.factor(step)
    }

    fn factor(&self, step: usize) -> f64 {
        let step = step as f64;
        let warmup = self.warmup_steps as f64;
        if step < warmup {
            return step / warmup.max(1.0);
        }
        let total = self.total_steps as f64;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((total - step) / (total - warmup).max(1.0)).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (step - warmup) / (total - warmup).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: ScheduleKind, warmup_steps: usize, total: usize) -> Schedule {
        Schedule::new(&ScheduleConfig { kind, warmup_steps, warmup_ratio: 0.0 }, 1.0, total)
    }

    #[test]
    fn linear_warms_up_then_decays_to_zero_like_transformers() {
        let linear = schedule(ScheduleKind::Linear, 2, 10);
        let factors: Vec<f64> = (0..10).map(|step| linear.learning_rate(step)).collect();
        // transformers: [0, 0.5, 1, 0.875, 0.75, ..., 0.125]
        assert_eq!(factors[0], 0.0);
        assert_eq!(factors[1], 0.5);
        assert_eq!(factors[2], 1.0);
        assert!((factors[3] - 0.875).abs() < 1e-12);
        assert!((factors[9] - 0.125).abs() < 1e-12);
        assert_eq!(linear.learning_rate(10), 0.0);
    }

    #[test]
    fn cosine_passes_through_one_half_at_mid_decay() {
        let cosine = schedule(ScheduleKind::Cosine, 0, 10);
        assert_eq!(cosine.learning_rate(0), 1.0);
        assert!((cosine.learning_rate(5) - 0.5).abs() < 1e-12);
        assert!(cosine.learning_rate(10).abs() < 1e-12);
    }

    #[test]
    fn constant_stays_after_warmup_and_ratio_rounds_up() {
        let constant = schedule(ScheduleKind::Constant, 3, 10);
        assert!((constant.learning_rate(1) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(constant.learning_rate(9), 1.0);
        let ratio = Schedule::new(
            &ScheduleConfig { kind: ScheduleKind::Linear, warmup_steps: 0, warmup_ratio: 0.1 },
            1.0,
            15,
        );
        assert_eq!(ratio.warmup_steps, 2);
    }
}
