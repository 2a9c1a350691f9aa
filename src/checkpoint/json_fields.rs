//! Typed access to the fields of a JSON object with errors that name the file and the field.

use anyhow::{anyhow, Result};
use serde_json::{Map, Value};

/// A JSON object, the file it came from and the key prefix used in messages (`"rope_scaling."`).
pub(crate) struct Fields<'a> {
    obj: &'a Map<String, Value>,
    origin: &'a str,
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(obj: &'a Map<String, Value>, origin: &'a str, prefix: &'a str) -> Self {
        Self {
            obj,
            origin,
            prefix,
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn missing(&self, key: &str) -> anyhow::Error {
        anyhow!("{}: missing field `{}{}`", self.origin, self.prefix, key)
    }

    fn bad(&self, key: &str, want: &str, v: &Value) -> anyhow::Error {
        anyhow!(
            "{}: field `{}{}` must be {want}, found {v}",
            self.origin,
            self.prefix,
            key
        )
    }

    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.bad(key, "a non-negative integer", v))
            })
            .transpose()
    }

    pub(crate) fn req_usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    pub(crate) fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| self.bad(key, "a 32-bit token id", v))
            })
            .transpose()
    }

    pub(crate) fn req_u32(&self, key: &str) -> Result<u32> {
        self.opt_u32(key)?.ok_or_else(|| self.missing(key))
    }

    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| self.bad(key, "a finite number", v))
            })
            .transpose()
    }

    pub(crate) fn req_f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?.ok_or_else(|| self.missing(key))
    }

    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.bad(key, "true or false", v)))
            .transpose()
    }

    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.bad(key, "a string", v)))
            .transpose()
    }

    pub(crate) fn req_string(&self, key: &str) -> Result<String> {
        Ok(self
            .opt_str(key)?
            .ok_or_else(|| self.missing(key))?
            .to_string())
    }

    pub(crate) fn req_str_list(&self, key: &str) -> Result<Vec<String>> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        let arr = v
            .as_array()
            .ok_or_else(|| self.bad(key, "a list of strings", v))?;
        arr.iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.bad(key, "a list of strings", v))
            })
            .collect()
    }

    pub(crate) fn req_u32_list(&self, key: &str) -> Result<Vec<u32>> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        let arr = v
            .as_array()
            .ok_or_else(|| self.bad(key, "a list of token ids", v))?;
        arr.iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| self.bad(key, "a list of token ids", v))
            })
            .collect()
    }
}
