//! Errors of the ClickHouse client, classified as transient (retry) or persistent (fail).

/// ClickHouse error codes that a retry may cure (server busy, network, timeouts, too many parts).
const TRANSIENT_CODES: &[u32] = &[
    159, // TIMEOUT_EXCEEDED
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    252, // TOO_MANY_PARTS
    319, // UNKNOWN_STATUS_OF_INSERT
    425, // SYSTEM_ERROR
];

/// MEMORY_LIMIT_EXCEEDED: the statement needed more than its `max_memory_usage` (or the server's limit).
const MEMORY_LIMIT_EXCEEDED: u32 = 241;

/// What went wrong talking to ClickHouse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClickHouseError {
    /// The connection URL or a connection variable is unusable.
    #[error("cannot use ClickHouse URL {url}: {reason}")]
    BadUrl {
        /// The URL without its password.
        url: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// The request did not complete (connection refused or reset, timeout).
    #[error("ClickHouse at {endpoint} is unreachable while trying to {context}: {source}")]
    Unreachable {
        /// `host:port`.
        endpoint: String,
        /// What was being done.
        context: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error.
    #[error("ClickHouse refused to {context}: {message}")]
    Server {
        /// What was being done.
        context: String,
        /// The HTTP status.
        status: u16,
        /// ClickHouse's error code (`Code: N`), when it sent one.
        code: Option<u32>,
        /// The server's message, first line.
        message: String,
    },
    /// An answer that this client cannot read.
    #[error("unexpected answer from ClickHouse while trying to {context}: {detail}")]
    Protocol {
        /// What was being done.
        context: String,
        /// What was wrong with the answer.
        detail: String,
    },
}

impl ClickHouseError {
    /// True when a retry may help: the server is unreachable or busy.
    pub fn is_transient(&self) -> bool {
        match self {
            ClickHouseError::Unreachable { .. } => true,
            ClickHouseError::Server { status, code, .. } => {
                *status == 503 || code.is_some_and(|c| TRANSIENT_CODES.contains(&c))
            }
            ClickHouseError::BadUrl { .. } | ClickHouseError::Protocol { .. } => false,
        }
    }

    /// True when the server refused the statement for memory (code 241): a smaller statement may fit.
    pub fn is_memory_limit(&self) -> bool {
        matches!(
            self,
            ClickHouseError::Server {
                code: Some(MEMORY_LIMIT_EXCEEDED),
                ..
            }
        )
    }

    /// Builds a [`ClickHouseError::Server`] from an error response body (`Code: 60, e.displayText() = ...`).
    pub(crate) fn from_response(context: &str, status: u16, body: &str) -> Self {
        let code = body
            .trim_start()
            .strip_prefix("Code: ")
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok());
        let message = body.lines().next().unwrap_or_default().trim();
        let message: String = message.chars().take(2000).collect();
        ClickHouseError::Server {
            context: context.to_owned(),
            status,
            code,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_code_is_read_from_the_body() {
        let err = ClickHouseError::from_response(
            "insert",
            500,
            "Code: 252, e.displayText() = DB::Exception: Too many parts (300)\n",
        );
        assert!(err.is_transient());
        let err = ClickHouseError::from_response(
            "insert",
            404,
            "Code: 60, e.displayText() = DB::Exception: Table x.y doesn't exist.",
        );
        assert!(!err.is_transient());
        assert!(err.to_string().contains("Table x.y doesn't exist"), "{err}");
        assert!(!err.is_memory_limit());
        let err = ClickHouseError::from_response(
            "insert",
            500,
            "Code: 241, e.displayText() = DB::Exception: Memory limit (for query) exceeded",
        );
        assert!(err.is_memory_limit() && !err.is_transient());
    }
}
