//! `gateway report`: what running at the edge saved against all-cloud, per
//! tenant and period.
//!
//! Every ledger row of a served request carries the all-cloud
//! counterfactual (`allcloud_usd`, `allcloud_joules`,
//! `allcloud_latency_ms`: the same tokens on the cloud backend the request
//! would have gone to had every request gone to the cloud). The report sums
//! them against what the rows did cost (`usd`, `joules`, `latency_ms`); CO2
//! is energy times the grid intensity (`grid_gco2_per_kwh`). A negative
//! saving is reported as such: it means the cloud would have been cheaper.
//! One JSON object per line, like the admin commands.

use std::collections::HashMap;
use std::io::Write;

use serde::Serialize;

use crate::store::{SavingsBucket, Store, StoreError};

/// Joules in a kilowatt-hour.
const J_PER_KWH: f64 = 3.6e6;

/// `gateway report`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Only this tenant (name or id).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Length of one period of the report.
    #[arg(long, value_enum, default_value_t = Period::Day)]
    pub period: Period,
    /// How many days back the report reaches.
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// Grid carbon intensity, gCO2 per kWh; the config's
    /// `grid_gco2_per_kwh` when absent.
    #[arg(long)]
    pub grid_gco2_per_kwh: Option<f64>,
}

/// How the report's rows are grouped in time (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Period {
    Hour,
    Day,
    Week,
    /// One row per tenant over the whole window.
    All,
}

impl Period {
    fn ms(self) -> i64 {
        match self {
            Period::Hour => 3_600_000,
            Period::Day => 86_400_000,
            Period::Week => 7 * 86_400_000,
            Period::All => i64::MAX,
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportLine {
    pub tenant: String,
    pub tenant_id: String,
    /// Start of the period (UTC, RFC 3339), or of the window for `--period all`.
    pub period_start: String,
    pub requests: u64,
    pub usd: f64,
    pub allcloud_usd: f64,
    pub saved_usd: f64,
    pub joules: f64,
    pub allcloud_joules: f64,
    pub saved_joules: f64,
    pub saved_co2_g: f64,
    pub mean_latency_ms: f64,
    pub allcloud_mean_latency_ms: f64,
    pub grid_gco2_per_kwh: f64,
}

/// Why the report cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no tenant named {0}")]
    NoTenant(String),
    #[error("grid_gco2_per_kwh must be a number >= 0")]
    BadIntensity,
    #[error("cannot write the report: {0}")]
    Write(#[from] std::io::Error),
}

/// Writes the report of the `args.days` before `now_ms` to `out`.
pub async fn run(
    store: &Store,
    args: &ReportArgs,
    default_intensity: f64,
    now_ms: i64,
    out: &mut impl Write,
) -> Result<(), ReportError> {
    let intensity = args.grid_gco2_per_kwh.unwrap_or(default_intensity);
    if !(intensity.is_finite() && intensity >= 0.0) {
        return Err(ReportError::BadIntensity);
    }
    let tenants: HashMap<String, String> = store
        .list_tenants()
        .await?
        .into_iter()
        .map(|t| (t.id, t.name))
        .collect();
    let tenant_id = match &args.tenant {
        None => None,
        Some(t) if tenants.contains_key(t) => Some(t.clone()),
        Some(t) => Some(
            tenants
                .iter()
                .find(|(_, name)| *name == t)
                .map(|(id, _)| id.clone())
                .ok_or_else(|| ReportError::NoTenant(t.clone()))?,
        ),
    };
    let since = now_ms.saturating_sub(i64::from(args.days) * 86_400_000);
    let buckets = store
        .savings(tenant_id.as_deref(), since, args.period.ms())
        .await?;
    for b in buckets {
        let start = if args.period == Period::All {
            since
        } else {
            b.start_ms
        };
        let name = tenants.get(&b.tenant_id).cloned().unwrap_or_default();
        let line = line(b, name, start, intensity);
        serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
        writeln!(out)?;
    }
    Ok(())
}

fn line(b: SavingsBucket, tenant: String, start_ms: i64, intensity: f64) -> ReportLine {
    // Exact below 2^53 requests.
    #[allow(clippy::cast_precision_loss)]
    let n = (b.requests as f64).max(1.0);
    let saved_joules = b.allcloud_joules - b.joules;
    ReportLine {
        tenant,
        tenant_id: b.tenant_id,
        period_start: rfc3339(start_ms),
        requests: b.requests,
        usd: b.usd,
        allcloud_usd: b.allcloud_usd,
        saved_usd: b.allcloud_usd - b.usd,
        joules: b.joules,
        allcloud_joules: b.allcloud_joules,
        saved_joules,
        saved_co2_g: saved_joules / J_PER_KWH * intensity,
        mean_latency_ms: b.latency_ms / n,
        allcloud_mean_latency_ms: b.allcloud_latency_ms / n,
        grid_gco2_per_kwh: intensity,
    }
}

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_212_800_000), "2026-12-02T12:00:00Z");
    }

    #[test]
    fn savings_and_co2_follow_from_the_sums() {
        let b = SavingsBucket {
            tenant_id: "t".into(),
            start_ms: 0,
            requests: 4,
            usd: 0.0,
            joules: 3.6e6,
            latency_ms: 400.0,
            allcloud_usd: 0.02,
            allcloud_joules: 7.2e6,
            allcloud_latency_ms: 4_000.0,
        };
        let l = line(b, "acme".into(), 0, 400.0);
        assert!((l.saved_usd - 0.02).abs() < 1e-12);
        assert!((l.saved_joules - 3.6e6).abs() < 1e-6);
        // One kWh saved at 400 g/kWh.
        assert!((l.saved_co2_g - 400.0).abs() < 1e-9);
        assert!((l.mean_latency_ms - 100.0).abs() < 1e-9);
        assert!((l.allcloud_mean_latency_ms - 1_000.0).abs() < 1e-9);
    }
}
