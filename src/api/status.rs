//! The one place library errors become gRPC status codes (DESIGN §6). Bad input never yields `Internal`
//! or `Unknown`: those mean a bug or a broken machine.

use tonic::{Code, Status};

use crate::error::Error;
use crate::provider::ProviderError;

pub fn code(e: &Error) -> Code {
    match e {
        Error::Malformed(_) | Error::Authentication | Error::EmptyPlaintext => {
            Code::InvalidArgument
        }
        Error::UnknownKek(_) => Code::FailedPrecondition,
        Error::Provider(p) => match p {
            ProviderError::InvalidWrappedKey(_) => Code::InvalidArgument,
            ProviderError::Unavailable(_) => Code::Unavailable,
            ProviderError::Refused(_) | ProviderError::Config(_) => Code::FailedPrecondition,
            ProviderError::PermissionDenied(_) => Code::PermissionDenied,
        },
        Error::TooLong { .. } | Error::Rng(_) => Code::Internal,
    }
}

/// The status for an error; the message is the error's own, which never carries key material.
pub fn to_status(e: &Error) -> Status {
    Status::new(code(e), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ciphertext::FormatError;

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
        ];
        for (e, c) in cases {
            assert_eq!(code(&e), c, "{e}");
        }
    }
}
