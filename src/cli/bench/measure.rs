//! What `strom bench` measures besides its own counters: latency histograms, CPU time and RSS
//! from `/proc`, and the progress ticker that draws the bar on stderr and records throughput
//! once a second.
//!
//! Nothing here runs per record: the load loops count into an atomic once per chunk of records,
//! and the ticker reads that counter ten times a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Latencies are recorded in nanoseconds, from 1 ns to one hour, to 3 significant digits.
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).context("creating a latency histogram")
}

/// Records `ns` (clamped into the histogram's range).
#[inline]
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

/// Nanoseconds from `epoch` to `t` (0 if `t` is earlier).
#[inline]
pub fn ns_since(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// The kernel's clock tick for `/proc/*/stat` times (`USER_HZ`): 100 on every Linux
/// architecture strom runs on.
const USER_HZ: f64 = 100.0;

/// CPU time and memory of one process, read from `/proc/<pid>/stat` and `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User CPU time, seconds (all threads).
    pub user_s: f64,
    /// System CPU time, seconds (all threads).
    pub system_s: f64,
    /// Resident set size now (VmRSS), bytes: anonymous memory plus the file pages mapped and
    /// touched (a broker's segment maps count here although they are page cache).
    pub rss: u64,
    /// The anonymous part of it (RssAnon): heap, stacks, buffers.
    pub rss_anon: u64,
}

/// Reads `pid`'s sample (`None`: this process). `None` when `/proc` cannot be read (not Linux,
/// or the process is gone).
pub fn proc_sample(pid: Option<u32>) -> Option<ProcSample> {
    let base = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    let stat = std::fs::read_to_string(format!("{base}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("{base}/status")).ok()?;
    let rss = status_kib(&status, "VmRSS:")? * 1024;
    let rss_anon = status_kib(&status, "RssAnon:").unwrap_or(0) * 1024;
    Some(ProcSample {
        user_s: utime / USER_HZ,
        system_s: stime / USER_HZ,
        rss,
        rss_anon,
    })
}

/// A `Name:   1234 kB` line of `/proc/*/status`, in KiB.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU and memory of a process over a measured interval.
#[derive(Debug, Clone, Copy)]
pub struct ProcUsage {
    /// User CPU seconds spent during the interval.
    pub user_s: f64,
    /// System CPU seconds spent during the interval.
    pub system_s: f64,
    /// RSS at the end, bytes.
    pub rss: u64,
    /// Largest RSS seen by the once-a-second samples and at both ends, bytes.
    pub rss_max: u64,
    /// RssAnon at the end, bytes.
    pub rss_anon: u64,
    /// Largest RssAnon seen, bytes.
    pub rss_anon_max: u64,
}

impl ProcUsage {
    /// From samples before and after, and the largest (RSS, RssAnon) seen in between.
    pub fn between(before: ProcSample, after: ProcSample, max_seen: (u64, u64)) -> Self {
        Self {
            user_s: (after.user_s - before.user_s).max(0.0),
            system_s: (after.system_s - before.system_s).max(0.0),
            rss: after.rss,
            rss_max: max_seen.0.max(before.rss).max(after.rss),
            rss_anon: after.rss_anon,
            rss_anon_max: max_seen.1.max(before.rss_anon).max(after.rss_anon),
        }
    }
}

/// Throughput over time: the counter's value about once a second.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// (seconds since the start, counter value), starting with (0, 0).
    pub points: Vec<(f64, u64)>,
    /// Largest (RSS, RssAnon) of this process seen by the ticker, bytes.
    pub self_rss_max: (u64, u64),
    /// Largest (RSS, RssAnon) of the `--broker-pid` process seen by the ticker, bytes.
    pub broker_rss_max: (u64, u64),
}

impl Timeline {
    /// Records per second in each interval: (end of the interval in seconds, rate).
    pub fn rates(&self) -> Vec<(f64, f64)> {
        self.points
            .windows(2)
            .filter(|w| w[1].0 > w[0].0)
            .map(|w| {
                let dt = w[1].0 - w[0].0;
                (w[1].0, w[1].1.saturating_sub(w[0].1) as f64 / dt)
            })
            .collect()
    }
}

/// What the progress bar counts towards.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// This many records.
    Records(u64),
    /// This long.
    Duration(Duration),
    /// Unknown: a spinner.
    Open,
}

/// The progress bar and the once-a-second sampler, running until [`Ticker::finish`].
#[derive(Debug)]
pub struct Ticker {
    /// Dropping it (in `finish`, or with the ticker when a run fails) stops the task at once.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Timeline>>,
}

impl Ticker {
    /// Starts drawing `label`'s progress (stderr, only when it is a terminal) from `counter`.
    pub fn start(
        label: &'static str,
        counter: Arc<AtomicU64>,
        goal: Goal,
        broker_pid: Option<u32>,
    ) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(tick(label, counter, goal, broker_pid, stopped));
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops, clears the bar and returns what was sampled (with a last point at this moment).
    pub async fn finish(mut self) -> Timeline {
        drop(self.stop.take());
        match self.task.take() {
            Some(t) => t.await.unwrap_or_default(),
            None => Timeline::default(),
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

async fn tick(
    label: &'static str,
    counter: Arc<AtomicU64>,
    goal: Goal,
    broker_pid: Option<u32>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) -> Timeline {
    let target = ProgressDrawTarget::stderr_with_hz(10);
    let bar = match goal {
        Goal::Records(n) => {
            let b = ProgressBar::with_draw_target(Some(n), target);
            b.set_style(style(
                "{prefix:>8} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} records  {msg}",
            ));
            b
        }
        Goal::Duration(d) => {
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            let b = ProgressBar::with_draw_target(Some(ms), target);
            b.set_style(style("{prefix:>8} [{elapsed_precise}] {wide_bar} {msg}"));
            b
        }
        Goal::Open => {
            let b = ProgressBar::with_draw_target(None, target);
            b.set_style(style("{prefix:>8} [{elapsed_precise}] {spinner} {msg}"));
            b
        }
    };
    bar.set_prefix(label);
    let start = Instant::now();
    let mut timeline = Timeline {
        points: vec![(0.0, 0)],
        ..Timeline::default()
    };
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_second = 1.0;
    let mut last = (0.0, 0u64);
    loop {
        let stop = tokio::select! {
            _ = interval.tick() => false,
            _ = &mut stopped => true,
        };
        let now = start.elapsed().as_secs_f64();
        let count = counter.load(Ordering::Relaxed);
        if stop {
            timeline.points.push((now, count));
            break;
        }
        match goal {
            Goal::Records(_) => bar.set_position(count),
            Goal::Duration(_) => {
                bar.set_position(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX))
            }
            Goal::Open => bar.tick(),
        }
        if now >= next_second {
            timeline.points.push((now, count));
            let rate = count.saturating_sub(last.1) as f64 / (now - last.0).max(1e-9);
            last = (now, count);
            next_second += 1.0;
            bar.set_message(match goal {
                Goal::Records(_) => format!("{}/s", human_count(rate)),
                _ => format!(
                    "{} records  {}/s",
                    human_count(count as f64),
                    human_count(rate)
                ),
            });
            if let Some(s) = proc_sample(None) {
                let m = &mut timeline.self_rss_max;
                *m = (m.0.max(s.rss), m.1.max(s.rss_anon));
            }
            if let Some(s) = broker_pid.and_then(|p| proc_sample(Some(p))) {
                let m = &mut timeline.broker_rss_max;
                *m = (m.0.max(s.rss), m.1.max(s.rss_anon));
            }
        }
    }
    bar.finish_and_clear();
    timeline
}

/// 1234567.0 -> "1.23 M".
pub fn human_count(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2} G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} K", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        let s = "Name:\tstrom\nVmHWM:\t  2048 kB\nVmRSS:\t   1024 kB\nRssAnon:\t 512 kB\n";
        assert_eq!(status_kib(s, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(s, "VmHWM:"), Some(2048));
        assert_eq!(status_kib(s, "RssAnon:"), Some(512));
        assert_eq!(status_kib(s, "VmSwap:"), None);
    }

    #[test]
    fn this_process_is_readable() {
        let s = proc_sample(None).expect("/proc/self");
        assert!(s.rss > 0);
        assert!(s.user_s >= 0.0 && s.system_s >= 0.0);
    }

    #[test]
    fn rates_per_interval() {
        let t = Timeline {
            points: vec![(0.0, 0), (1.0, 100), (2.0, 300), (2.5, 400)],
            ..Timeline::default()
        };
        assert_eq!(t.rates(), vec![(1.0, 100.0), (2.0, 200.0), (2.5, 200.0)]);
    }

    #[test]
    fn histogram_percentiles_are_ordered() {
        let mut h = new_histogram().unwrap();
        for v in 1..=10_000u64 {
            record_ns(&mut h, v * 1000);
        }
        record_ns(&mut h, 0);
        let qs: Vec<u64> = [0.5, 0.9, 0.99, 0.999]
            .iter()
            .map(|q| h.value_at_quantile(*q))
            .collect();
        assert!(qs.windows(2).all(|w| w[0] <= w[1]));
        assert!(h.max() >= qs[3]);
        assert_eq!(human_count(1_234_567.0), "1.23 M");
    }
}
