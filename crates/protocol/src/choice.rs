//! One definition per choice: [`choice!`](crate::choice!) writes an enum of named options with
//! its `ALL`, `name`, `Display`, `FromStr` (with an error that lists the names) and serde (as the
//! name), so that a command-line flag, a configuration file and JSON read the same words, and a
//! new option is one line.

use std::fmt;

/// A name that is none of a choice's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownChoice {
    /// What was being chosen (`backend`, `prompt format`).
    pub what: &'static str,
    /// The name given.
    pub name: String,
    /// The names there are, in order.
    pub expected: Vec<&'static str>,
}

impl fmt::Display for UnknownChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} `{}`: expected ", self.what, self.name)?;
        match self.expected.split_last() {
            Some((last, [])) => write!(f, "{last}"),
            Some((last, rest)) => write!(f, "{} or {last}", rest.join(", ")),
            None => write!(f, "nothing"),
        }
    }
}

impl std::error::Error for UnknownChoice {}

/// Writes an enum of named options: `choice! { /// doc  pub enum Mode("mode") { /// doc
/// Fast = "fast", ... } }`. Attributes on the enum and its variants are kept (`#[derive(Default)]`
/// with `#[default]` on one variant); `Debug`, `Clone`, `Copy`, `PartialEq`, `Eq` and `Hash` are
/// derived.
#[macro_export]
macro_rules! choice {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $( $(#[$variant_meta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$variant_meta])* $variant ),+
        }

        impl $name {
            /// Every option, in the order the command line lists them.
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            /// The option's name on the command line, in files and in JSON.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::choice::UnknownChoice;

            fn from_str(name: &str) -> ::std::result::Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|option| option.name() == name)
                    .ok_or_else(|| $crate::choice::UnknownChoice {
                        what: $what,
                        name: name.to_string(),
                        expected: Self::ALL.iter().map(|option| option.name()).collect(),
                    })
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(
                &self,
                serializer: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::std::result::Result<Self, D::Error> {
                let name = <::std::string::String as ::serde::Deserialize>::deserialize(
                    deserializer,
                )?;
                name.parse().map_err(::serde::de::Error::custom)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    crate::choice! {
        /// A choice for the test.
        #[derive(Default)]
        pub enum Speed("speed") {
            /// Slow.
            Slow = "slow",
            /// Fast.
            #[default]
            Fast = "fast",
            /// Faster.
            Faster = "fast-er",
        }
    }

    #[test]
    fn names_parse_back_print_and_go_through_serde() {
        for speed in Speed::ALL {
            assert_eq!(speed.name().parse::<Speed>().unwrap(), speed);
            assert_eq!(speed.to_string(), speed.name());
            let json = serde_json::to_string(&speed).unwrap();
            assert_eq!(json, format!("\"{}\"", speed.name()));
            assert_eq!(serde_json::from_str::<Speed>(&json).unwrap(), speed);
        }
        assert_eq!(Speed::default(), Speed::Fast);
    }

    #[test]
    fn an_unknown_name_lists_the_ones_there_are() {
        let error = "warp".parse::<Speed>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown speed `warp`: expected slow, fast or fast-er"
        );
        let error = serde_json::from_str::<Speed>("\"warp\"").unwrap_err();
        assert!(error.to_string().contains("expected slow, fast or fast-er"));
    }
}
