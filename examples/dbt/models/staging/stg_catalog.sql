-- Map the raw catalog onto pmatch's offer-table convention (id, title, description, brand, images, price, currency).
select
    sku          as id,
    product_name as title,
    details      as description,
    maker        as brand,
    photo_paths  as images,
    list_price   as price,
    currency
from read_parquet('{{ var("raw_dir") }}/raw_catalog.parquet')
