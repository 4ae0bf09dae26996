//! What a failed ClickHouse call means for the events it carried: [`classify`] tells a
//! *transient* failure (ClickHouse unreachable, timed out, overloaded, or failing for a
//! reason that is not the data's), retried as it is, from a *rejection* (ClickHouse answered
//! that it refuses the data), which the processor halves around.

/// What a failed ClickHouse call means for the events it carried.
#[derive(Debug, PartialEq)]
pub enum Failure {
    /// Not the data's fault: retry the same events later.
    Transient,
    /// ClickHouse refused the data (its words).
    Rejected(String),
}

/// ClickHouse exception codes that say nothing about the rows of an insert: the server is
/// overloaded, shutting down, out of memory or disk, read-only, denies access, or the schema
/// is not (yet) there. An insert failing with one of them is retried as it is.
const TRANSIENT_CODES: &[u32] = &[
    3,    // UNEXPECTED_END_OF_FILE (a cut connection)
    10,   // NOT_FOUND_COLUMN_IN_BLOCK
    16,   // NO_SUCH_COLUMN_IN_TABLE
    32,   // ATTEMPT_TO_READ_AFTER_EOF (a cut connection)
    33,   // CANNOT_READ_ALL_DATA (a cut connection)
    47,   // UNKNOWN_IDENTIFIER
    60,   // UNKNOWN_TABLE
    81,   // UNKNOWN_DATABASE
    159,  // TIMEOUT_EXCEEDED
    160,  // TOO_SLOW
    164,  // READONLY
    173,  // CANNOT_ALLOCATE_MEMORY
    192,  // UNKNOWN_USER
    193,  // WRONG_PASSWORD
    194,  // REQUIRED_PASSWORD
    195,  // IP_ADDRESS_NOT_ALLOWED
    198,  // DNS_ERROR
    201,  // QUOTA_EXCEEDED
    202,  // TOO_MANY_SIMULTANEOUS_QUERIES
    203,  // NO_FREE_CONNECTION
    209,  // SOCKET_TIMEOUT
    210,  // NETWORK_ERROR
    225,  // NO_ZOOKEEPER
    236,  // ABORTED
    241,  // MEMORY_LIMIT_EXCEEDED
    242,  // TABLE_IS_READ_ONLY
    243,  // NOT_ENOUGH_SPACE
    252,  // TOO_MANY_PARTS (merges are behind; but see `classify`)
    279,  // ALL_CONNECTION_TRIES_FAILED
    285,  // TOO_FEW_LIVE_REPLICAS
    286,  // UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
    319,  // UNKNOWN_STATUS_OF_INSERT
    394,  // QUERY_WAS_CANCELLED
    425,  // SYSTEM_ERROR
    439,  // CANNOT_SCHEDULE_TASK
    473,  // DEADLOCK_AVOIDED
    497,  // ACCESS_DENIED
    516,  // AUTHENTICATION_FAILED
    999,  // KEEPER_EXCEPTION
    1000, // POCO_EXCEPTION
];

/// Transient or rejection. Only an exception ClickHouse answered with counts as a rejection,
/// and not when its code is one of [`TRANSIENT_CODES`]: connection failures, timeouts and
/// answers without an exception code (a proxy's 502, say) are transient. TOO_MANY_PARTS is a
/// rejection when it is about the insert itself (rows of more than
/// `max_partitions_per_insert_block` months in one insert, which halving resolves), and
/// transient when merges are behind.
pub fn classify(error: &clickhouse::error::Error) -> Failure {
    let clickhouse::error::Error::BadResponse(text) = error else {
        return Failure::Transient;
    };
    let Some(code) = exception_code(text) else {
        return Failure::Transient;
    };
    let per_insert_partitions = code == 252 && text.contains("partitions for single INSERT");
    if TRANSIENT_CODES.contains(&code) && !per_insert_partitions {
        return Failure::Transient;
    }
    Failure::Rejected(text.clone())
}

/// The `NNN` of `Code: NNN. DB::Exception: …`.
fn exception_code(text: &str) -> Option<u32> {
    let at = text.find("Code: ")? + "Code: ".len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::error::Error;

    #[test]
    fn only_answered_data_errors_are_rejections() {
        let rejected = |text: &str| classify(&Error::BadResponse(text.into()));
        assert_eq!(
            rejected("Code: 469. DB::Exception: Constraint `c` for table t is violated at row 2. (VIOLATED_CONSTRAINT) (version 26.9.2.1)"),
            Failure::Rejected("Code: 469. DB::Exception: Constraint `c` for table t is violated at row 2. (VIOLATED_CONSTRAINT) (version 26.9.2.1)".into())
        );
        assert!(matches!(
            rejected(
                "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100). (TOO_MANY_PARTS)"
            ),
            Failure::Rejected(_)
        ));
        for transient in [
            "Code: 252. DB::Exception: Too many parts (3001 with average size of 1 KiB) in table 't'. Merges are processing significantly slower than inserts. (TOO_MANY_PARTS)",
            "Code: 241. DB::Exception: Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED)",
            "Code: 60. DB::Exception: Table tally_web.events does not exist. (UNKNOWN_TABLE)",
            "Code: 497. DB::Exception: default: Not enough privileges. (ACCESS_DENIED)",
            "502 Bad Gateway",
            "",
        ] {
            assert_eq!(rejected(transient), Failure::Transient, "{transient}");
        }
        assert_eq!(classify(&Error::TimedOut), Failure::Transient);
        assert_eq!(
            classify(&Error::Network("connection refused".into())),
            Failure::Transient
        );
    }
}
