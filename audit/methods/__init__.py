"""Debiasing methods, one file each; `none` (the base class) does nothing."""
