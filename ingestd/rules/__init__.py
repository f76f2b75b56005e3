"""The rules language and templates; patient folder to patient id."""
