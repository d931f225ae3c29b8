//! Open-file descriptors. Every connection costs one, and so does everything
//! else the process holds: the store's files, the connections of its own
//! clients (hubs, webhooks), log files. A flood of connections must not take
//! the last ones, or `accept` fails with "Too many open files" and the store
//! cannot open a file, so connections are capped below the process's limit
//! less a reserve.

/// Fewer connections than this leaves a server no room to work.
const MIN_CONNECTIONS: u64 = 16;

/// Linux refuses a soft limit above `fs.nr_open` (1,048,576 by default),
/// even when the hard limit says "unlimited".
const HIGHEST_SOFT_LIMIT: u64 = 1 << 20;

/// Why no connection budget could be set.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    #[error("cannot read the open-file limit: {0}")]
    ReadLimit(#[source] std::io::Error),
    #[error("cannot raise the open-file limit: {0}")]
    RaiseLimit(#[source] std::io::Error),
    #[error(
        "the open-file limit is {open_files}, which leaves {room} connections after the \
         {reserve} descriptors kept for the store, hub clients and logs; raise it \
         (ulimit -n, or LimitNOFILE= in a systemd unit) or lower limits.reserved_descriptors"
    )]
    TooFewForConnections {
        open_files: u64,
        room: u64,
        reserve: u64,
    },
}

/// What the process may hold, and how many connections that leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// The open-file limit in force (after raising it).
    pub open_files: u64,
    /// The soft limit before it was raised, when it was.
    pub raised_from: Option<u64>,
    /// Connections served at once: the smaller of what was asked for and
    /// the open-file limit less the reserve.
    pub max_connections: usize,
}

/// Raises the soft open-file limit to the hard limit, then works out how
/// many connections fit below it with `reserve` descriptors left over.
pub fn connection_budget(wanted: usize, reserve: u64) -> Result<ConnectionBudget, DescriptorError> {
    let (before, _) = rlimit::Resource::NOFILE
        .get()
        .map_err(DescriptorError::ReadLimit)?;
    let open_files =
        rlimit::increase_nofile_limit(HIGHEST_SOFT_LIMIT).map_err(DescriptorError::RaiseLimit)?;
    budget(wanted, reserve, before, open_files)
}

fn budget(
    wanted: usize,
    reserve: u64,
    before: u64,
    open_files: u64,
) -> Result<ConnectionBudget, DescriptorError> {
    let room = open_files.saturating_sub(reserve);
    if room < MIN_CONNECTIONS {
        return Err(DescriptorError::TooFewForConnections {
            open_files,
            room,
            reserve,
        });
    }
    Ok(ConnectionBudget {
        open_files,
        raised_from: (open_files > before).then_some(before),
        max_connections: usize::try_from(room).unwrap_or(usize::MAX).min(wanted),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

    use super::*;

    #[test]
    fn connections_stay_below_the_limit_less_the_reserve() {
        let b = budget(50_000, 256, 1024, 1024).unwrap();
        assert_eq!(b.max_connections, 768);
        assert_eq!(b.raised_from, None);
        let b = budget(1000, 256, 1024, 65_536).unwrap();
        assert_eq!(b.max_connections, 1000, "what was asked for, when it fits");
        assert_eq!(b.raised_from, Some(1024));
        let err = budget(50_000, 256, 200, 200).unwrap_err().to_string();
        assert!(err.contains("open-file limit is 200"), "{err}");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let b = connection_budget(usize::MAX, 0).unwrap();
        let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!(soft, hard.min(HIGHEST_SOFT_LIMIT));
        assert_eq!(b.open_files, soft);
    }
}
