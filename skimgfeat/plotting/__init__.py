"""Drawing results for people: contact sheets of similar photos, copies and matches."""
