//! Head sampling, as configured by `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (OpenTelemetry SDK environment variables).

use super::context::{Parent, TraceId};

/// A sampler that decides from the trace id alone (the root samplers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    /// Record every trace.
    AlwaysOn,
    /// Record none.
    AlwaysOff,
    /// Record a fraction, decided from the trace id so that every
    /// participant with the same ratio decides the same way.
    Ratio(f64),
}

/// The configured sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Decides for requests without a (valid) incoming `traceparent`, and
    /// for all requests when not parent-based.
    pub root: Root,
    /// `parentbased_*`: follow the caller's sampled flag when it sent one.
    pub parent_based: bool,
}

impl Default for Sampler {
    /// `parentbased_always_on`, the OpenTelemetry default.
    fn default() -> Self {
        Self {
            root: Root::AlwaysOn,
            parent_based: true,
        }
    }
}

/// An unusable sampler setting.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplerError {
    /// Unknown `OTEL_TRACES_SAMPLER`.
    #[error(
        "OTEL_TRACES_SAMPLER={0:?} is not supported: use always_on, always_off, traceidratio, parentbased_always_on (default), parentbased_always_off or parentbased_traceidratio"
    )]
    Unknown(String),
    /// `OTEL_TRACES_SAMPLER_ARG` is not a probability.
    #[error("OTEL_TRACES_SAMPLER_ARG={0:?} is not a probability: give a number from 0.0 to 1.0")]
    BadRatio(String),
}

impl Sampler {
    /// From the values of `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`
    /// (None or empty: unset). The argument is read only by the ratio
    /// samplers; it defaults to 1.0 there.
    pub fn from_env_values(name: Option<&str>, arg: Option<&str>) -> Result<Self, SamplerError> {
        let name = name.map(str::trim).filter(|s| !s.is_empty());
        let ratio = || -> Result<f64, SamplerError> {
            match arg.map(str::trim).filter(|s| !s.is_empty()) {
                None => Ok(1.0),
                Some(a) => match a.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => Err(SamplerError::BadRatio(a.to_owned())),
                },
            }
        };
        let (root, parent_based) = match name.map(str::to_ascii_lowercase).as_deref() {
            None | Some("parentbased_always_on") => (Root::AlwaysOn, true),
            Some("always_on") => (Root::AlwaysOn, false),
            Some("always_off") => (Root::AlwaysOff, false),
            Some("traceidratio") => (Root::Ratio(ratio()?), false),
            Some("parentbased_always_off") => (Root::AlwaysOff, true),
            Some("parentbased_traceidratio") => (Root::Ratio(ratio()?), true),
            Some(_) => return Err(SamplerError::Unknown(name.unwrap_or_default().to_owned())),
        };
        Ok(Self { root, parent_based })
    }

    /// Whether to record the trace `trace_id` (continued from `parent`, if
    /// the client sent a valid one).
    pub fn should_sample(&self, parent: Option<&Parent>, trace_id: &TraceId) -> bool {
        if self.parent_based
            && let Some(p) = parent
        {
            return p.sampled();
        }
        match self.root {
            Root::AlwaysOn => true,
            Root::AlwaysOff => false,
            Root::Ratio(r) => ratio_sampled(r, trace_id),
        }
    }

    /// Short description for the start-up log line.
    pub fn describe(&self) -> String {
        let root = match self.root {
            Root::AlwaysOn => "always_on".to_owned(),
            Root::AlwaysOff => "always_off".to_owned(),
            Root::Ratio(r) => format!("traceidratio({r})"),
        };
        if self.parent_based {
            format!("parentbased_{root}")
        } else {
            root
        }
    }
}

/// The lower 8 bytes of the trace id, read as a number, below
/// `ratio * 2^64`: deterministic per trace, so retries and other hops with
/// the same ratio agree.
fn ratio_sampled(ratio: f64, trace_id: &TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low);
    // 2^64 as f64; the product is < 2^64 since ratio < 1.
    let bound = (ratio * 18_446_744_073_709_551_616.0) as u64;
    x < bound
}

#[cfg(test)]
mod tests {
    use super::super::context::{FLAG_SAMPLED, new_trace_id};
    use super::*;

    fn parent(sampled: bool) -> Parent {
        Parent {
            trace_id: [7; 16],
            span_id: [9; 8],
            flags: if sampled { FLAG_SAMPLED } else { 0 },
        }
    }

    fn s(name: &str, arg: Option<&str>) -> Sampler {
        Sampler::from_env_values(Some(name), arg).unwrap()
    }

    #[test]
    fn default_is_parentbased_always_on() {
        let d = Sampler::from_env_values(None, None).unwrap();
        assert_eq!(d, Sampler::default());
        assert_eq!(Sampler::from_env_values(Some(" "), None).unwrap(), d);
        let id = new_trace_id();
        assert!(d.should_sample(None, &id));
        assert!(d.should_sample(Some(&parent(true)), &id));
        assert!(!d.should_sample(Some(&parent(false)), &id));
    }

    #[test]
    fn plain_samplers_ignore_the_parent() {
        let id = new_trace_id();
        assert!(s("always_on", None).should_sample(Some(&parent(false)), &id));
        assert!(!s("ALWAYS_OFF", None).should_sample(Some(&parent(true)), &id));
        assert!(!s("traceidratio", Some("0")).should_sample(Some(&parent(true)), &id));
    }

    #[test]
    fn parentbased_off_follows_parents_only() {
        let pb = s("parentbased_always_off", None);
        assert!(!pb.should_sample(None, &new_trace_id()));
        assert!(pb.should_sample(Some(&parent(true)), &new_trace_id()));
    }

    #[test]
    fn ratio_decides_by_trace_id() {
        let half = s("traceidratio", Some("0.5"));
        let mut low = [0u8; 16];
        low[8] = 0x10; // 0x10.. / 2^64 = 0.06 < 0.5
        let mut high = [0u8; 16];
        high[8] = 0xf0; // 0.94 > 0.5
        assert!(half.should_sample(None, &low));
        assert!(!half.should_sample(None, &high));
        // Over many random ids, roughly half (a loose bound: not a timing
        // assert, a statistical one with ~10 sigma of slack).
        let n = (0..10_000)
            .filter(|_| half.should_sample(None, &new_trace_id()))
            .count();
        assert!((4_500..=5_500).contains(&n), "{n}");
        assert!(s("traceidratio", None).should_sample(None, &high));
        let pbr = s("parentbased_traceidratio", Some("0.0"));
        assert!(!pbr.should_sample(None, &low));
        assert!(pbr.should_sample(Some(&parent(true)), &low));
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(matches!(
            Sampler::from_env_values(Some("jaeger_remote"), None),
            Err(SamplerError::Unknown(_))
        ));
        for arg in ["1.5", "-0.1", "half", "NaN"] {
            assert_eq!(
                Sampler::from_env_values(Some("traceidratio"), Some(arg)),
                Err(SamplerError::BadRatio(arg.to_owned())),
                "{arg}"
            );
        }
        // The argument is ignored by samplers that take none.
        assert!(Sampler::from_env_values(Some("always_on"), Some("junk")).is_ok());
    }
}
