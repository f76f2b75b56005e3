"""Filing: free names in done/ and failed/, moves that never overwrite, receipts."""
