//! `[anomalies] webhook_url`: each anomaly POSTed as JSON, off the request path.
//!
//! The request that raised an anomaly only puts it in a bounded queue (a full queue drops
//! it, counted); one task posts each in turn, retrying a failed POST with a doubling
//! pause from 1s, up to `webhook_attempts` times. The audit trail holds every anomaly
//! whatever becomes of its POST.

use std::time::Duration;

use tokio::sync::mpsc;

use super::Anomaly;
use crate::metrics::Metrics;

/// One anomaly to post, with where and how (from the config revision that raised it).
struct Job {
    url: String,
    body: Vec<u8>,
    attempts: u32,
}

/// The queue in front of the posting task.
#[derive(Debug, Clone)]
pub struct Webhook {
    queue: mpsc::Sender<Job>,
}

/// The JSON body of a POST: the anomaly, plus which replica raised it.
#[derive(serde::Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    replica: &'a str,
    #[serde(flatten)]
    anomaly: &'a Anomaly,
}

impl Webhook {
    /// Starts the posting task (on the current tokio runtime) with a queue of `capacity`
    /// anomalies; each POST may take `timeout`.
    pub fn start(
        capacity: usize,
        timeout: Duration,
        metrics: std::sync::Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let (queue, mut jobs) = mpsc::channel::<Job>(capacity.max(1));
        tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                let outcome = if post(&client, &job).await {
                    "delivered"
                } else {
                    "failed"
                };
                metrics.inc("ferry_anomaly_webhook_total", &[("outcome", outcome)]);
            }
        });
        Ok(Self { queue })
    }

    /// Queues `anomaly` for `url`; never waits. A full queue drops it (counted).
    pub fn send(
        &self,
        url: &str,
        attempts: u32,
        replica: &str,
        anomaly: &Anomaly,
        metrics: &Metrics,
    ) {
        let body = Body {
            kind: "anomaly",
            replica,
            anomaly,
        };
        let Ok(body) = serde_json::to_vec(&body) else {
            return;
        };
        let job = Job {
            url: url.to_owned(),
            body,
            attempts,
        };
        if self.queue.try_send(job).is_err() {
            metrics.inc("ferry_anomaly_webhook_total", &[("outcome", "dropped")]);
            tracing::warn!(
                kind = anomaly.kind.as_str(),
                "anomaly webhook queue is full; dropped one (the audit trail has it)"
            );
        }
    }
}

/// Posts one job, retrying; true once a POST was answered 2xx.
async fn post(client: &reqwest::Client, job: &Job) -> bool {
    let mut pause = Duration::from_secs(1);
    for attempt in 1..=job.attempts {
        let sent = client
            .post(&job.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(job.body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return true,
            // The URL is not logged: it often carries the receiver's secret.
            Ok(r) => tracing::warn!(
                attempt,
                status = r.status().as_u16(),
                "anomaly webhook refused the POST"
            ),
            Err(e) => {
                tracing::warn!(attempt, error = %e.without_url(), "anomaly webhook unreachable")
            }
        }
        if attempt < job.attempts {
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        }
    }
    false
}
