//! Probes that need I/O, each giving one signal's value or nothing when it cannot be read:
//! the database's round trip (`database_rtt`, seconds), failed logins over the last minute
//! (`login_failures_per_minute`, from the audit table `sekisho-auth` writes — read only, so
//! the auth crate needs no counter of its own), the used share of the file system holding
//! the data directory (`disk`), and the days left on a listener's certificate
//! (`tls_expiry_days`, read from its PEM file: the one a reload would load).

use std::path::Path;
use std::time::Duration;

use sekisho_db::{now_millis, Database};

/// The audit event of a failed login (`sekisho-auth`, `login.rs`).
const LOGIN_FAILED: &str = "authn_login_fail";

/// One `SELECT 1`, in seconds; nothing when the database does not answer within `timeout`.
pub async fn database_rtt(database: &Database, timeout: Duration) -> Option<f64> {
    match tokio::time::timeout(timeout, database.ping()).await {
        Ok(Ok(rtt)) => Some(rtt.as_secs_f64()),
        _ => None,
    }
}

/// Failed logins written to the audit table in the last minute; nothing when the table cannot
/// be read (no `[auth]`: the table is there but empty, which reads 0).
pub async fn login_failures_per_minute(database: &Database) -> Option<f64> {
    let since = now_millis().saturating_sub(60_000);
    let count: i64 = sekisho_db::sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE event = $1 AND at >= $2",
    )
    .bind(LOGIN_FAILED)
    .bind(since)
    .fetch_one(database.pool())
    .await
    .ok()?;
    Some(count as f64)
}

/// The used share (0–1) of the file system holding `path`, as `df` counts it (blocks not
/// available to unprivileged users count as used).
pub fn disk_used(path: &Path) -> Option<f64> {
    disk_space(path).map(|space| space.used)
}

/// The file system holding a path: its used share and what is left.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskSpace {
    /// Used share, 0–1, as `df` counts it.
    pub used: f64,
    /// Bytes an unprivileged process may still write.
    pub free_bytes: u64,
}

/// The file system holding `path`; nothing when it cannot be read.
pub fn disk_space(path: &Path) -> Option<DiskSpace> {
    let stat = rustix::fs::statvfs(path).ok()?;
    let total = stat.f_blocks as f64;
    (total > 0.0).then(|| DiskSpace {
        used: 1.0 - stat.f_bavail as f64 / total,
        free_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
    })
}

/// Days from `now` (Unix seconds) until the first certificate of the PEM file at `path`
/// expires (negative once it has); nothing when the file cannot be read or parsed.
pub fn tls_expiry_days(path: &Path, now: i64) -> Option<f64> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(path).ok()?;
    let first = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()?
        .ok()?;
    let not_after = not_after(&first)?;
    Some((not_after - now) as f64 / 86_400.0)
}

/// One DER element: its tag, its content and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let length = bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
        (length, rest)
    };
    (rest.len() >= length).then(|| {
        let (content, rest) = rest.split_at(length);
        (tag, content, rest)
    })
}

/// `notAfter` of an X.509 certificate (Unix seconds): Certificate → tbsCertificate → (version),
/// serialNumber, signature, issuer, validity → notAfter (RFC 5280, 4.1).
fn not_after(der: &[u8]) -> Option<i64> {
    const SEQUENCE: u8 = 0x30;
    let (tag, certificate, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    // The explicit version, [0], is there for v2 and v3 certificates.
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs)?.2;
    }
    for _ in 0..3 {
        tbs = element(tbs)?.2; // serialNumber, signature, issuer
    }
    let (tag, validity, _) = element(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    let after = element(validity)?.2; // past notBefore
    let (tag, text, _) = element(after)?;
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        // UTCTime, YYMMDDHHMMSSZ: 50–99 are 19xx (RFC 5280, 4.1.2.5.1).
        0x17 if digits.len() == 12 => {
            let yy: i32 = digits.get(..2)?.parse().ok()?;
            (
                if yy >= 50 { 1900 + yy } else { 2000 + yy },
                digits.get(2..)?,
            )
        }
        // GeneralizedTime, YYYYMMDDHHMMSSZ.
        0x18 if digits.len() == 14 => (digits.get(..4)?.parse().ok()?, digits.get(4..)?),
        _ => return None,
    };
    let field = |at: usize| -> Option<u8> { rest.get(at..at + 2)?.parse().ok() };
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(field(0)?).ok()?, field(2)?)
            .ok()?;
    let at = date
        .with_hms(field(4)?, field(6)?, field(8)?)
        .ok()?
        .assume_utc();
    Some(at.unix_timestamp())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_of_a_directory_that_exists_is_a_share() {
        let used = disk_used(&std::env::temp_dir()).unwrap();
        assert!((0.0..=1.0).contains(&used), "{used}");
        assert!(disk_used(Path::new("/no/such/directory")).is_none());
    }
}
