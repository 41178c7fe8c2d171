-- pmatch-duckdb: embedding functions.
--
-- Python UDFs cannot be overloaded by argument type in DuckDB, so the user-facing names below are
-- TEMP macros that dispatch on the argument's type to differently named UDFs. `typeof()` is constant
-- for a column, so DuckDB folds each CASE to a single branch at plan time (no per-row cost).
-- TEMP macros belong to one connection: call pmatch_duckdb.install(cursor) on extra cursors.

-- Every `_pm_*(` UDF name below gets the installing connection's suffix (e.g. `_pm_embed_text_3(`)
-- when the file is loaded: UDFs are database-wide, these macros are per connection.

-- Each embedding function also has a named form taking the model as last argument, e.g.
-- pm_embed_text(txt, 'my-clip'): any installed bundle of the right kind (a text or clip model for text,
-- an image or clip model for images). Named forms return FLOAT[] (the length is the model's dimension;
-- cast to FLOAT[n] where a fixed size is needed); an unknown model name is an error, a NULL one gives NULL.
-- The text and image vectors of one clip model share a space: compare them for text -> image search.

-- pm_embed_text(VARCHAR) -> FLOAT[384]; NULL, empty or whitespace-only text -> NULL.
-- Text longer than the model's limit (256 word pieces for MiniLM, 77 BPE tokens for CLIP) is truncated.
-- pm_embed_text(VARCHAR, model VARCHAR) -> FLOAT[].
-- Any other argument type is an error naming pm_embed_text, the type and the cast that fixes it.
CREATE OR REPLACE TEMP MACRO pm_embed_text(txt) AS
    CASE
        WHEN typeof(txt) IN ('VARCHAR', '"NULL"') OR typeof(txt) LIKE 'ENUM(%' THEN _pm_embed_text(txt::VARCHAR)
        ELSE error('pm_embed_text expects VARCHAR text, got ' || typeof(txt) || ' (cast it: pm_embed_text(x::VARCHAR))')
    END,
    (txt, model) AS
    CASE
        WHEN typeof(txt) IN ('VARCHAR', '"NULL"') OR typeof(txt) LIKE 'ENUM(%'
            THEN _pm_embed_text_named(txt::VARCHAR, model::VARCHAR)
        ELSE error('pm_embed_text expects VARCHAR text, got ' || typeof(txt) || ' (cast it: pm_embed_text(x::VARCHAR, model))')
    END;

-- _pm_is_path_list(type name) -> BOOLEAN: whether an argument of that type is a list of image paths
-- (VARCHAR[], a fixed-size VARCHAR[n], or a NULL literal).
CREATE OR REPLACE TEMP MACRO _pm_is_path_list(t) AS t IN ('VARCHAR[]', '"NULL"') OR t SIMILAR TO 'VARCHAR\[[0-9]+\]';

-- pm_embed_images(VARCHAR[]) -> FLOAT[1280]: an offer's images embedded and mean-pooled
-- (re-normalised); failing images are skipped; NULL only if none can be used.
-- pm_embed_images(VARCHAR[], model VARCHAR) -> FLOAT[].
CREATE OR REPLACE TEMP MACRO pm_embed_images(imgs) AS
    CASE
        WHEN _pm_is_path_list(typeof(imgs))
            THEN _pm_embed_images(imgs::VARCHAR[])
        ELSE error('pm_embed_images expects VARCHAR[] (a list of image paths), got ' || typeof(imgs)
                   || ' (one path: pm_embed_image(path) or pm_embed_images([path]))')
    END,
    (imgs, model) AS
    CASE
        WHEN _pm_is_path_list(typeof(imgs))
            THEN _pm_embed_images_named(imgs::VARCHAR[], model::VARCHAR)
        ELSE error('pm_embed_images expects VARCHAR[] (a list of image paths), got ' || typeof(imgs)
                   || ' (one path: pm_embed_image(path, model) or pm_embed_images([path], model))')
    END;

-- pm_image_errors(VARCHAR[]) -> VARCHAR[]: per image, NULL if usable, else the reason.
CREATE OR REPLACE TEMP MACRO pm_image_errors(imgs) AS
    CASE
        WHEN _pm_is_path_list(typeof(imgs))
            THEN _pm_image_errors(imgs::VARCHAR[])
        ELSE error('pm_image_errors expects VARCHAR[] (a list of image paths), got ' || typeof(imgs)
                   || ' (one image: pm_image_error(path))')
    END;

-- pm_embed_image(VARCHAR path | BLOB encoded bytes) -> FLOAT[1280], NULL when the image is unusable
-- (ask pm_image_error for the reason). pm_embed_image(img, model VARCHAR) -> FLOAT[].
CREATE OR REPLACE TEMP MACRO pm_embed_image(img) AS
    CASE
        WHEN typeof(img) = 'BLOB' THEN _pm_embed_image_blob(img::BLOB)
        WHEN typeof(img) IN ('VARCHAR', '"NULL"') THEN _pm_embed_image_path(img::VARCHAR)
        ELSE error('pm_embed_image expects VARCHAR (a file path) or BLOB (encoded image bytes), got '
                   || typeof(img))
    END,
    (img, model) AS
    CASE
        WHEN typeof(img) = 'BLOB' THEN _pm_embed_image_blob_named(img::BLOB, model::VARCHAR)
        WHEN typeof(img) IN ('VARCHAR', '"NULL"') THEN _pm_embed_image_path_named(img::VARCHAR, model::VARCHAR)
        ELSE error('pm_embed_image expects VARCHAR (a file path) or BLOB (encoded image bytes), got '
                   || typeof(img))
    END;

-- pm_image_error(VARCHAR path | BLOB bytes) -> VARCHAR: NULL when the image is usable, otherwise a
-- short reason: 'missing file', 'outside allowed roots', 'not an image', 'truncated', 'corrupt',
-- 'too large', 'empty path', 'empty data', 'not a file', 'unreadable', 'url fetching disabled'.
-- For a VARCHAR[] of images use pm_image_errors(list) -> VARCHAR[] (one reason or NULL per image).
CREATE OR REPLACE TEMP MACRO pm_image_error(img) AS
    CASE
        WHEN typeof(img) = 'BLOB' THEN _pm_image_error_blob(img::BLOB)
        WHEN typeof(img) IN ('VARCHAR', '"NULL"') THEN _pm_image_error_path(img::VARCHAR)
        ELSE error('pm_image_error expects VARCHAR (a file path) or BLOB (encoded image bytes), got '
                   || typeof(img))
    END;

-- pm_models(): installed model bundles and whether their file hashes verify.
CREATE OR REPLACE TEMP MACRO pm_models() AS TABLE
    SELECT unnest(_pm_models_list(), recursive := true);
