//! `JsonBody<T>`: a JSON request body documented like poem-openapi's `Json<T>` but parsed with
//! serde, so that a 400 names the field at fault (`employee.occurred_at: …`), which
//! poem-openapi's own parser does not.
use poem::{FromRequest, Request, RequestBody};
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use serde::de::DeserializeOwned;

use super::problem::ApiError;

pub struct JsonBody<T>(pub T);

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn check_content_type(content_type: &str) -> bool {
        content_type.parse::<mime::Mime>().is_ok_and(|m| {
            m.type_() == "application"
                && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"))
        })
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// `deserialize_with` for a field that may be left out but is not nullable (`#[serde(default,
/// deserialize_with = "present")]` on an `Option<T>`): `null` is refused, naming what was
/// expected, instead of being read as "left out" — a `PATCH` with `"base_url": null` changes
/// nothing, and saying so silently would be worse than an error.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// [`present`] for a free-form JSON field, which would otherwise read `null` as a value.
pub fn present_json<'de, D>(deserializer: D) -> Result<Option<serde_json::Value>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    match <serde_json::Value as serde::Deserialize>::deserialize(deserializer)? {
        serde_json::Value::Null => Err(serde::de::Error::invalid_type(
            serde::de::Unexpected::Unit,
            &"a value (leave the field out to keep it as it is)",
        )),
        value => Ok(Some(value)),
    }
}

/// Parses `bytes` as `T`, naming the path of the first problem.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::invalid(format!("body: {}", e.inner()))
        } else {
            ApiError::invalid(format!("{path}: {}", e.inner()))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("body: {e}")))?;
    Ok(value)
}

impl<T: Type + DeserializeOwned + Send> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = Vec::<u8>::from_request(request, body).await?;
        if data.is_empty() {
            return Err(ApiError::invalid("body: a JSON body is required").into());
        }
        Ok(Self(parse_json(&data)?))
    }
}

poem_openapi::impl_apirequest_for_payload!(JsonBody<T>, T: Type + DeserializeOwned + Send);

/// An optional JSON body: a request without one (no body and no `Content-Type`, as routes
/// that used to take none are called) is `T::default()`; one that is sent is parsed like
/// `JsonBody`.
pub struct OptionalJsonBody<T>(pub T);

impl<'a, T: Type + DeserializeOwned + Default + Send> poem_openapi::ApiExtractor<'a>
    for OptionalJsonBody<T>
{
    const TYPES: &'static [poem_openapi::ApiExtractorType] =
        &[poem_openapi::ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<poem_openapi::registry::MetaRequest> {
        Some(poem_openapi::registry::MetaRequest {
            description: None,
            content: vec![poem_openapi::registry::MetaMediaType {
                content_type: <JsonBody<T> as Payload>::CONTENT_TYPE,
                schema: T::schema_ref(),
            }],
            required: false,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: poem_openapi::ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let data = <Vec<u8> as FromRequest>::from_request(request, body).await?;
        if data.is_empty() {
            return Ok(Self(T::default()));
        }
        match request.content_type() {
            Some(ct) if <JsonBody<T> as Payload>::check_content_type(ct) => {
                Ok(Self(parse_json(&data)?))
            }
            Some(ct) => Err(poem_openapi::error::ContentTypeError::NotSupported {
                content_type: ct.to_owned(),
            }
            .into()),
            None => Err(poem_openapi::error::ContentTypeError::ExpectContentType.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    #[test]
    fn errors_name_the_path() {
        let detail = |raw: &str| parse_json::<Outer>(raw.as_bytes()).unwrap_err().detail;
        assert!(detail(r#"{"inner": {"count": "x"}}"#).starts_with("inner.count: invalid type"));
        assert!(detail(r#"{"inner": {"count": 1, "extra": 2}}"#).contains("unknown field `extra`"));
        assert!(detail(r#"{"inner": {"count": -1}}"#).starts_with("inner.count:"));
        assert!(
            detail(r#"{"inner": "#).starts_with("body:")
                || detail(r#"{"inner": "#).starts_with("inner")
        );
        assert!(detail(r#"{"inner": {"count": 1}} trailing"#).starts_with("body:"));
    }
}
