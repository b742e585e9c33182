//! Energy measurement and per-request attribution.
//!
//! Two meters, best first:
//! - **RAPL** (`/sys/class/powercap/intel-rapl:N/energy_uj`): the CPU
//!   package's own energy counter, in microjoules, summed over packages (or
//!   the platform's `psys` domain alone, where there is one, since it
//!   contains the packages) and corrected for wrap-around. It measures the
//!   whole package, so other processes' work is included.
//! - **CPU time**: the process's CPU time (all threads) × a configured
//!   watts-per-core figure. Available everywhere, blind to memory and idle
//!   power, and only as good as the watts figure.
//!
//! Attribution: the meter is read whenever a request starts or ends; the
//! energy since the previous reading is split equally among the requests that
//! were running in between. Batched requests therefore share the batch's
//! energy, and energy spent while nothing runs is not charged to anyone.
//! Each request also learns how many requests ran beside it on average
//! (weighted by time), so that joules per token can be told apart by the
//! load they were measured at.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// How the joules were measured; published in responses and the load report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Rapl,
    CpuTime,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rapl => "rapl",
            Self::CpuTime => "cpu_time",
        }
    }
}

/// One RAPL package domain and the state needed to undo its wrap-around.
#[derive(Debug)]
pub struct RaplDomain {
    energy_file: PathBuf,
    max_uj: u64,
    last_uj: u64,
}

/// A cumulative energy counter in joules.
#[derive(Debug)]
pub enum Meter {
    Rapl {
        domains: Vec<RaplDomain>,
        total_j: f64,
    },
    CpuTime {
        watts_per_core: f64,
    },
}

impl Meter {
    /// RAPL when at least one package counter is readable, else CPU time.
    pub fn detect(powercap_dir: &Path, watts_per_core: f64) -> Self {
        let domains = rapl_domains(powercap_dir);
        if domains.is_empty() {
            Self::CpuTime { watts_per_core }
        } else {
            Self::Rapl {
                domains,
                total_j: 0.0,
            }
        }
    }

    pub fn method(&self) -> Method {
        match self {
            Self::Rapl { .. } => Method::Rapl,
            Self::CpuTime { .. } => Method::CpuTime,
        }
    }

    /// Joules since an arbitrary origin; only differences are meaningful.
    pub fn read_joules(&mut self) -> f64 {
        match self {
            Self::Rapl { domains, total_j } => {
                for d in domains.iter_mut() {
                    let Some(now) = read_u64(&d.energy_file) else {
                        continue;
                    };
                    let delta = if now >= d.last_uj {
                        now - d.last_uj
                    } else {
                        // The counter wrapped at max_energy_range_uj.
                        d.max_uj.saturating_sub(d.last_uj) + now
                    };
                    d.last_uj = now;
                    *total_j += delta as f64 / 1e6;
                }
                *total_j
            }
            Self::CpuTime { watts_per_core } => {
                cpu_time::ProcessTime::try_now().map_or(0.0, |t| t.as_duration().as_secs_f64())
                    * *watts_per_core
            }
        }
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The top-level domains to sum. Sub-domains (`intel-rapl:N:M`: cores,
/// uncore, DRAM) are parts of their package and would be counted twice.
/// Among the top-level `intel-rapl:N` domains, Intel client platforms have
/// a `psys` one (the whole platform: it already contains the packages), so
/// when one is readable it is used alone; otherwise the `package-N` domains
/// are summed. Domains of other or unknown names are left out.
fn rapl_domains(powercap_dir: &Path) -> Vec<RaplDomain> {
    let Ok(entries) = fs::read_dir(powercap_dir) else {
        return Vec::new();
    };
    let mut readable: Vec<(String, RaplDomain)> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("intel-rapl:") && name.matches(':').count() == 1
        })
        .filter_map(|e| {
            let name = fs::read_to_string(e.path().join("name")).ok()?;
            let energy_file = e.path().join("energy_uj");
            let last_uj = read_u64(&energy_file)?;
            let max_uj = read_u64(&e.path().join("max_energy_range_uj")).unwrap_or(u64::MAX);
            let domain = RaplDomain {
                energy_file,
                max_uj,
                last_uj,
            };
            Some((name.trim().to_string(), domain))
        })
        .collect();
    let psys = readable.iter().any(|(name, _)| name == "psys");
    readable.retain(|(name, _)| {
        if psys {
            name == "psys"
        } else {
            name.starts_with("package-")
        }
    });
    let mut domains: Vec<RaplDomain> = readable.into_iter().map(|(_, d)| d).collect();
    domains.sort_by(|a, b| a.energy_file.cmp(&b.energy_file));
    domains
}

/// Splits measured energy among concurrently running requests.
#[derive(Debug)]
pub struct Accountant {
    inner: Mutex<Ledger>,
    method: Method,
}

#[derive(Debug)]
struct Ledger {
    meter: Meter,
    last_j: f64,
    last_at: Instant,
    /// What each running request has been charged so far.
    running: HashMap<u64, Charge>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Charge {
    joules: f64,
    /// Σ (requests running × seconds) and Σ seconds over its intervals.
    running_seconds: f64,
    seconds: f64,
}

/// What one request was charged when it ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    pub joules: f64,
    /// Requests running while it ran (itself included), averaged over its
    /// time; 1.0 for a request too short to time.
    pub mean_running: f64,
}

impl Accountant {
    pub fn new(mut meter: Meter) -> Self {
        let last_j = meter.read_joules();
        Self {
            method: meter.method(),
            inner: Mutex::new(Ledger {
                meter,
                last_j,
                last_at: Instant::now(),
                running: HashMap::new(),
            }),
        }
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// Starts charging request `id`.
    pub fn begin(&self, id: u64) {
        let mut ledger = self.lock();
        ledger.settle();
        ledger.running.insert(id, Charge::default());
    }

    /// Stops charging request `id` and returns what it was charged.
    pub fn end(&self, id: u64) -> Share {
        let mut ledger = self.lock();
        ledger.settle();
        let c = ledger.running.remove(&id).unwrap_or_default();
        Share {
            joules: c.joules,
            mean_running: if c.seconds > 0.0 {
                c.running_seconds / c.seconds
            } else {
                1.0
            },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (each operation is one insert or remove), so poisoning is ignored.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Ledger {
    fn settle(&mut self) {
        let now = self.meter.read_joules();
        let delta = (now - self.last_j).max(0.0);
        self.last_j = now;
        let at = Instant::now();
        let seconds = at.duration_since(self.last_at).as_secs_f64();
        self.last_at = at;
        if self.running.is_empty() {
            return;
        }
        let n = self.running.len() as f64;
        for c in self.running.values_mut() {
            c.joules += delta / n;
            c.running_seconds += n * seconds;
            c.seconds += seconds;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, domain: &str, energy: u64, max: u64) {
        let d = dir.join(domain);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("energy_uj"), format!("{energy}\n")).unwrap();
        fs::write(d.join("max_energy_range_uj"), format!("{max}\n")).unwrap();
        // The kernel's names: `package-N` at the top, parts below it.
        if !d.join("name").exists() {
            let name = match domain.matches(':').count() {
                1 => format!("package-{}", &domain["intel-rapl:".len()..]),
                _ => "core".to_string(),
            };
            fs::write(d.join("name"), format!("{name}\n")).unwrap();
        }
    }

    fn name(dir: &Path, domain: &str, name: &str) {
        let d = dir.join(domain);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("name"), format!("{name}\n")).unwrap();
    }

    #[test]
    fn rapl_sums_packages_and_ignores_subdomains() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "intel-rapl:0", 1_000_000, 10_000_000);
        write(dir.path(), "intel-rapl:1", 5_000_000, 10_000_000);
        write(dir.path(), "intel-rapl:0:0", 0, 10_000_000);
        let mut meter = Meter::detect(dir.path(), 10.0);
        assert_eq!(meter.method(), Method::Rapl);
        let start = meter.read_joules();
        write(dir.path(), "intel-rapl:0", 3_000_000, 10_000_000);
        write(dir.path(), "intel-rapl:1", 6_000_000, 10_000_000);
        write(dir.path(), "intel-rapl:0:0", 9_000_000, 10_000_000);
        let used = meter.read_joules() - start;
        assert!((used - 3.0).abs() < 1e-9, "{used}");
    }

    /// An Intel client platform: `intel-rapl:0` is the package, `intel-rapl:1`
    /// is `psys`, the platform that contains it. Summing both would count the
    /// package twice.
    #[test]
    fn a_psys_domain_is_used_alone() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "intel-rapl:0", 1_000_000, u64::MAX);
        name(dir.path(), "intel-rapl:1", "psys");
        write(dir.path(), "intel-rapl:1", 2_000_000, u64::MAX);
        write(dir.path(), "intel-rapl:0:0", 0, u64::MAX);
        let mut meter = Meter::detect(dir.path(), 10.0);
        assert_eq!(meter.method(), Method::Rapl);
        let start = meter.read_joules();
        // The package used 3 J of the platform's 5 J.
        write(dir.path(), "intel-rapl:0", 4_000_000, u64::MAX);
        write(dir.path(), "intel-rapl:1", 7_000_000, u64::MAX);
        write(dir.path(), "intel-rapl:0:0", 2_000_000, u64::MAX);
        let used = meter.read_joules() - start;
        assert!((used - 5.0).abs() < 1e-9, "{used}");
    }

    #[test]
    fn an_unreadable_psys_falls_back_to_the_packages() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "intel-rapl:0", 1_000_000, u64::MAX);
        // psys present but its counter unreadable (e.g. restricted to root).
        name(dir.path(), "intel-rapl:1", "psys");
        let mut meter = Meter::detect(dir.path(), 10.0);
        assert_eq!(meter.method(), Method::Rapl);
        let start = meter.read_joules();
        write(dir.path(), "intel-rapl:0", 3_500_000, u64::MAX);
        let used = meter.read_joules() - start;
        assert!((used - 2.5).abs() < 1e-9, "{used}");
    }

    #[test]
    fn top_level_domains_of_other_names_are_not_summed() {
        let dir = tempfile::tempdir().unwrap();
        name(dir.path(), "intel-rapl:0", "dram");
        write(dir.path(), "intel-rapl:0", 0, u64::MAX);
        assert_eq!(Meter::detect(dir.path(), 10.0).method(), Method::CpuTime);
    }

    #[test]
    fn rapl_counter_wrap_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "intel-rapl:0", 9_500_000, 10_000_000);
        let mut meter = Meter::detect(dir.path(), 10.0);
        let start = meter.read_joules();
        write(dir.path(), "intel-rapl:0", 250_000, 10_000_000);
        let used = meter.read_joules() - start;
        assert!((used - 0.75).abs() < 1e-9, "{used}");
    }

    #[test]
    fn without_powercap_the_cpu_time_meter_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut meter = Meter::detect(&dir.path().join("absent"), 10.0);
        assert_eq!(meter.method(), Method::CpuTime);
        let a = meter.read_joules();
        // Burn some CPU so process time advances.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        assert!(meter.read_joules() > a);
    }

    #[test]
    fn concurrent_requests_share_energy_equally() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "intel-rapl:0", 0, u64::MAX);
        let acc = Accountant::new(Meter::detect(dir.path(), 0.0));
        acc.begin(1);
        write(dir.path(), "intel-rapl:0", 2_000_000, u64::MAX); // 2 J, request 1 alone
        acc.begin(2);
        write(dir.path(), "intel-rapl:0", 6_000_000, u64::MAX); // 4 J shared by 1 and 2
        let one = acc.end(1).joules;
        write(dir.path(), "intel-rapl:0", 7_000_000, u64::MAX); // 1 J, request 2 alone
        let two = acc.end(2).joules;
        assert!((one - 4.0).abs() < 1e-9, "{one}");
        assert!((two - 3.0).abs() < 1e-9, "{two}");
        // Idle energy is charged to no one.
        write(dir.path(), "intel-rapl:0", 9_000_000, u64::MAX);
        acc.begin(3);
        assert!(acc.end(3).joules.abs() < 1e-9);
    }

    #[test]
    fn each_request_learns_how_many_ran_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "intel-rapl:0", 0, u64::MAX);
        let acc = Accountant::new(Meter::detect(dir.path(), 0.0));
        let pause = || std::thread::sleep(std::time::Duration::from_millis(40));
        acc.begin(1);
        pause(); // 1 alone
        acc.begin(2);
        acc.begin(3);
        pause(); // three running
        let three = acc.end(3).mean_running;
        let two = acc.end(2).mean_running;
        pause(); // 1 alone again
        let one = acc.end(1).mean_running;
        // 3 ran only while three ran (one interval), 2 also for the instants
        // between the begins and between the ends; 1 ran alone, with three,
        // then alone: about (1 + 3 + 1) / 3.
        assert!((three - 3.0).abs() < 1e-9, "{three}");
        // A pause of the test between the calls (a loaded machine) weighs
        // two's instants with one other running more: below 3, not below 2.5.
        assert!((2.5..=3.0).contains(&two), "{two}");
        assert!(one > 1.4 && one < 1.9, "{one}");
        // A request that ends as it starts ran with itself alone.
        acc.begin(4);
        assert!(acc.end(4).mean_running >= 1.0);
    }
}
