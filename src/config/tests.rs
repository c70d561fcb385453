//! Loader tests: both shipped examples, and every error path in both forms.
