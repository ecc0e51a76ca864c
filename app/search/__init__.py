"""The read path: request → legs → fusion, filters, ACL, boosts → hits."""
