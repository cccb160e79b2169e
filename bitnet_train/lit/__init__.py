"""LightningModules, callbacks and checkpoint IO."""
