//! The keys the job file accepts, section by section, read from the parser's own types: serde's
//! derive hands each struct's field names to the deserializer, and a deserializer that only
//! records them is enough to list them. The reference (docs/job-file.md) is checked against this
//! list by a test, so a key added to the parser without documentation fails it.

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::file::JobFile;
use super::models::ModelFile;
use super::pipeline::{GenerateFile, PairwiseFile};
use super::{ConstitutionSpec, CritiqueReviseSpec, DialogueSpec, InputSpec};

/// Every section of the job file (`""` for the top level, `models.NAME` for each model) with
/// the keys it accepts; a key that opens a section of its own is listed as that section.
pub fn accepted_keys() -> Vec<(&'static str, Vec<&'static str>)> {
    let sections = [
        ("input", fields::<InputSpec>()),
        ("constitution", fields::<ConstitutionSpec>()),
        ("critique_revise", fields::<CritiqueReviseSpec>()),
        ("pairwise", without(fields::<PairwiseFile>(), &["generate"])),
        ("pairwise.generate", fields::<GenerateFile>()),
        ("dialogue", fields::<DialogueSpec>()),
        ("models.NAME", fields::<ModelFile>()),
    ];
    let top = without(
        fields::<JobFile>(),
        &[
            "input",
            "constitution",
            "critique_revise",
            "pairwise",
            "dialogue",
            "models",
        ],
    );
    std::iter::once(("", top)).chain(sections).collect()
}

fn without(fields: Vec<&'static str>, sections: &[&str]) -> Vec<&'static str> {
    fields
        .into_iter()
        .filter(|field| !sections.contains(field))
        .collect()
}

/// The field names `T`'s derived `Deserialize` asks for.
fn fields<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
    let mut recorder = FieldRecorder(Vec::new());
    let _ = T::deserialize(&mut recorder);
    recorder.0
}

/// A deserializer that records the fields of the struct it is asked for, then gives up.
struct FieldRecorder(Vec<&'static str>);

impl<'de> Deserializer<'de> for &mut FieldRecorder {
    type Error = de::value::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.extend_from_slice(fields);
        Err(de::Error::custom("fields recorded"))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only a struct's fields are recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sections_list_their_keys() {
        let keys = accepted_keys();
        let section = |name: &str| &keys.iter().find(|(s, _)| *s == name).unwrap().1;
        assert!(section("").contains(&"name") && !section("").contains(&"input"));
        assert!(section("input").contains(&"path"));
        assert!(section("models.NAME").contains(&"api_key_env"));
        assert!(!section("pairwise").contains(&"generate"));
    }
}
