//! The one place library errors become gRPC status codes (DESIGN §6). Bad input never yields `Internal`
//! or `Unknown`: those mean a bug or a broken machine.

use tonic::{Code, Status};

use crate::error::{Error, ErrorKind};

/// The status code of an error kind (DESIGN §6).
pub(crate) fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidInput => Code::InvalidArgument,
        ErrorKind::UnknownKey | ErrorKind::Refused | ErrorKind::Config => Code::FailedPrecondition,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The status for an error; the message is the error's own, which never carries key material.
pub(crate) fn to_status(e: &Error) -> Status {
    Status::new(code(e.kind()), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ciphertext::FormatError;
    use crate::error::ProviderError;

    #[test]
    fn design_section_6_mapping() {
        let cases = [
            (
                Error::Malformed(FormatError::BadMagic),
                Code::InvalidArgument,
            ),
            (Error::Authentication, Code::InvalidArgument),
            (Error::EmptyPlaintext, Code::InvalidArgument),
            (Error::UnknownKek("x".into()), Code::FailedPrecondition),
            (
                Error::Provider(ProviderError::InvalidWrappedKey("x".into())),
                Code::InvalidArgument,
            ),
            (
                Error::Provider(ProviderError::Unavailable("x".into())),
                Code::Unavailable,
            ),
            (
                Error::Provider(ProviderError::Refused("x".into())),
                Code::FailedPrecondition,
            ),
            (
                Error::Provider(ProviderError::PermissionDenied("x".into())),
                Code::PermissionDenied,
            ),
            (
                Error::PlaintextTooLong {
                    plaintext: 2000,
                    len: 2210,
                    limit: 1024,
                    api: "v2",
                },
                Code::InvalidArgument,
            ),
        ];
        for (e, c) in cases {
            assert_eq!(code(e.kind()), c, "{e}");
        }
    }
}
