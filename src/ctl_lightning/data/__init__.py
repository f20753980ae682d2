"""Annotations -> product store -> DataModules: everything before the model."""
