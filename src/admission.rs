//! The mutating admission webhook for pods: placement hints → node affinity (or a denial).
//!
//! ```text
//! kube-apiserver ──POST /admission/pods──▶ routes (decode AdmissionReview, body limit)
//!                                            │  Pod + NodePool snapshot + catalog index
//!                                            ▼
//!                                          hints::decide (pure) ──▶ Verdict
//!                                            │
//!                                            ▼
//!                                          wire (AdmissionReview v1, patch in standard base64)
//! ```
//!
//! `hint_requirements` is a small label-requirement evaluator kept local until the general
//! requirements model replaces it.

pub mod hint_requirements;
pub mod hints;
pub mod routes;
pub mod wire;

pub use hints::{CatalogIndex, Denial, DenialKind, HintContext, HintKey, PatchOp, Verdict, decide};
pub use routes::{AdmissionState, NodePoolSnapshot, router};

/// Default cap on an AdmissionReview body: a pod is at most ~1.5 MiB in etcd, and a review
/// carries the object once on CREATE (twice on UPDATE), plus the envelope.
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 4 << 20;

/// Settings of the webhook, validated once; tests build it directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Whether opted-in pods get `schedulerName: gantry` (off when another mechanism sets it).
    pub set_scheduler_name: bool,
    /// Largest accepted request body; larger bodies get HTTP 413.
    pub body_limit_bytes: usize,
    /// Weight (1–100) of the preferred term `spot-preferred` adds.
    pub spot_preferred_weight: i32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            set_scheduler_name: true,
            body_limit_bytes: DEFAULT_BODY_LIMIT_BYTES,
            spot_preferred_weight: hints::DEFAULT_SPOT_PREFERRED_WEIGHT,
        }
    }
}

/// The webhook's flags, for the server command to `#[command(flatten)]`.
#[derive(Debug, Clone, clap::Args)]
pub struct AdmissionArgs {
    /// Do not set `schedulerName: gantry` on opted-in pods (hints are still turned into affinity).
    #[arg(long, env = "GANTRY_ADMISSION_KEEP_SCHEDULER_NAME")]
    pub admission_keep_scheduler_name: bool,
    /// Largest AdmissionReview body accepted, in bytes.
    #[arg(long, env = "GANTRY_ADMISSION_BODY_LIMIT_BYTES", default_value_t = DEFAULT_BODY_LIMIT_BYTES)]
    pub admission_body_limit_bytes: usize,
    /// Weight (1–100) of the preferred node-affinity term added for `spot-preferred`.
    #[arg(long, env = "GANTRY_ADMISSION_SPOT_PREFERRED_WEIGHT", default_value_t = hints::DEFAULT_SPOT_PREFERRED_WEIGHT,
          value_parser = clap::value_parser!(i32).range(1..=100))]
    pub admission_spot_preferred_weight: i32,
}

impl From<&AdmissionArgs> for AdmissionConfig {
    fn from(args: &AdmissionArgs) -> Self {
        AdmissionConfig {
            set_scheduler_name: !args.admission_keep_scheduler_name,
            body_limit_bytes: args.admission_body_limit_bytes,
            spot_preferred_weight: args.admission_spot_preferred_weight,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        admission: AdmissionArgs,
    }

    #[test]
    fn default_flags_give_the_default_config() {
        let cmd = Cmd::try_parse_from(["gantry"]).unwrap();
        assert_eq!(
            AdmissionConfig::from(&cmd.admission),
            AdmissionConfig::default()
        );
    }

    #[test]
    fn flags_map_onto_the_config() {
        let cmd = Cmd::try_parse_from([
            "gantry",
            "--admission-keep-scheduler-name",
            "--admission-body-limit-bytes",
            "1024",
            "--admission-spot-preferred-weight",
            "80",
        ])
        .unwrap();
        assert_eq!(
            AdmissionConfig::from(&cmd.admission),
            AdmissionConfig {
                set_scheduler_name: false,
                body_limit_bytes: 1024,
                spot_preferred_weight: 80,
            }
        );
        assert!(Cmd::try_parse_from(["gantry", "--admission-spot-preferred-weight", "0"]).is_err());
    }
}
