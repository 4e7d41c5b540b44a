//! `peft serve`'s parts: the engine's thread ([`worker`]), the routes ([`api`]) in OpenAI's shapes
//! ([`openai`], [`error`]), and text out of tokens ([`text`]). The command itself is
//! [`crate::commands::serve`].
//!
//! ```
//! use peft_cli::serve::text::StopStrings;
//! // Stop strings work on text: a request stopped at "\n" answers the text before it.
//! let mut stops = StopStrings::new(vec!["\n".into()]);
//! assert_eq!(stops.feed("one\ntwo"), ("one".to_string(), true));
//! ```

pub mod api;
pub mod error;
pub mod openai;
pub mod text;
pub mod worker;
