"""Demo helpers for pmatch-duckdb: a generated product catalog and supplier feed."""
