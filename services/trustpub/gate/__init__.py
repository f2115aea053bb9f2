"""trustpub upload gate: Trusted Publishing in front of any index that takes uploads with basic auth."""
