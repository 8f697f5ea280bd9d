//! Finding the primary behind Redis Sentinels, and how many replicas a primary has.

use std::time::Duration;

/// Asks each Sentinel in turn for `master`'s address, connects, and keeps the first node
/// that says (`ROLE`) it is the primary: a Sentinel that has not yet seen a failover may
/// name the old one. The node is reached with the scheme, user and password of the
/// Sentinel URL that named it.
pub(super) async fn connect_primary(
    sentinels: &[String],
    master: &str,
    timeout: Duration,
) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let mut last = None;
    for s in sentinels {
        match tokio::time::timeout(timeout, ask(s, master, timeout)).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "a Sentinel did not answer in time",
                )));
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::Io, "no Sentinel is configured"))
    }))
}

async fn ask(
    sentinel: &str,
    master: &str,
    timeout: Duration,
) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let client = redis::Client::open(sentinel)?;
    let mut s = client.get_multiplexed_async_connection().await?;
    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(master)
        .query_async(&mut s)
        .await?;
    let Some((host, port)) = addr else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "the Sentinel does not know this master name",
        )));
    };
    let mut url = url::Url::parse(sentinel).map_err(|_| {
        redis::RedisError::from((redis::ErrorKind::Io, "a Sentinel URL does not parse"))
    })?;
    let moved = url.set_host(Some(&host)).is_ok() && url.set_port(Some(port)).is_ok();
    if !moved {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "the Sentinel named an address that is not a host",
        )));
    }
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    let mut conn =
        redis::aio::ConnectionManager::new_with_config(redis::Client::open(url.as_str())?, config)
            .await?;
    let role: redis::Value = redis::cmd("ROLE").query_async(&mut conn).await?;
    let is_primary = match &role {
        redis::Value::Array(items) => matches!(
            items.first(),
            Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"
        ),
        _ => false,
    };
    if is_primary {
        Ok(conn)
    } else {
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "the node a Sentinel named is not the primary (yet)",
        )))
    }
}

/// How many replicas the primary behind `conn` reports connected (`INFO replication`).
pub(super) async fn connected_replicas(
    conn: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<u32> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("connected_slaves:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0))
}
