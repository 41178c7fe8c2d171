-- pmatch-duckdb: catalog identifiers. The offer convention's optional gtin column is checked and
-- normalised exactly as pm_index and match_products do it (pmatch_duckdb/features/codes.py).

-- _pm_gtin_text(code) -> VARCHAR: a code as text; integer columns get back the leading zeros they lost.
CREATE OR REPLACE TEMP MACRO _pm_gtin_text(code) AS
    CASE
        WHEN typeof(code) IN ('TINYINT', 'SMALLINT', 'INTEGER', 'BIGINT', 'HUGEINT', 'UTINYINT', 'USMALLINT',
                              'UINTEGER', 'UBIGINT', 'UHUGEINT')
            THEN lpad(CAST(code AS VARCHAR), 14, '0')
        -- a whole number in a DECIMAL / DOUBLE column: as an integer (else it is no GTIN)
        WHEN typeof(code) IN ('FLOAT', 'DOUBLE') OR typeof(code) LIKE 'DECIMAL(%'
            THEN CASE WHEN TRY_CAST(code AS HUGEINT) = code THEN lpad(CAST(TRY_CAST(code AS HUGEINT) AS VARCHAR), 14, '0')
                      ELSE CAST(code AS VARCHAR) END
        ELSE CAST(code AS VARCHAR) END;

-- pm_gtin(VARCHAR | integer) -> VARCHAR: the 14-digit form of a valid GTIN-8/12/13/14 (EAN, UPC; spaces and
-- hyphens ignored), NULL when missing or invalid. The leading zeros a numeric column lost are restored.
CREATE OR REPLACE TEMP MACRO pm_gtin(code) AS _pm_gtin(_pm_gtin_text(code));

-- pm_gtin_error(VARCHAR | integer) -> VARCHAR: why a code is not a valid GTIN ('bad check digit', 'wrong
-- length (...)', 'not digits', 'all zeros'); NULL when valid or empty. Such codes are no match evidence.
CREATE OR REPLACE TEMP MACRO pm_gtin_error(code) AS _pm_gtin_error(_pm_gtin_text(code));
