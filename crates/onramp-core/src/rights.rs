//! Rights a shared access policy grants, as a small set of flags with Azure's
//! names: the provisioning service's policies and the companion hub's have
//! the same shape and the same text form.

/// Defines a set of rights: its flags and their Azure names, set operations,
/// the comma-separated text Azure writes and reads, and `Debug`.
#[macro_export]
macro_rules! named_rights {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident { $($flag:ident = $bit:literal => $text:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        $vis struct $name(u8);

        impl $name {
            $(pub const $flag: Self = Self($bit);)+
            pub const ALL: Self = Self(0 $(| $bit)+);
            const NAMES: &'static [(Self, &'static str)] = &[$((Self::$flag, $text)),+];

            pub fn contains(&self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            pub fn intersects(&self, other: Self) -> bool {
                self.0 & other.0 != 0
            }

            pub fn union(self, other: Self) -> Self {
                Self(self.0 | other.0)
            }

            pub fn bits(&self) -> u8 {
                self.0
            }

            pub fn from_bits(bits: u8) -> Self {
                Self(bits & Self::ALL.0)
            }

            /// Parses Azure's form, `"EnrollmentRead, EnrollmentWrite"` (any
            /// case; commas, spaces or `|` between names); the first word
            /// that names no right otherwise.
            pub fn parse_names(text: &str) -> Result<Self, &str> {
                let mut rights = Self::default();
                for word in text.split([',', ' ', '|']).filter(|w| !w.is_empty()) {
                    let (bit, _) = Self::NAMES
                        .iter()
                        .find(|(_, name)| name.eq_ignore_ascii_case(word))
                        .ok_or(word)?;
                    rights = rights.union(*bit);
                }
                Ok(rights)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let names: Vec<&str> = Self::NAMES
                    .iter()
                    .filter(|(bit, _)| self.contains(*bit))
                    .map(|(_, name)| *name)
                    .collect();
                f.write_str(&names.join(", "))
            }
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}
