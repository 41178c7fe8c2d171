-- Map the raw supplier feed onto the offer-table convention.
select
    offer_ref  as id,
    name       as title,
    brand_name as brand,
    pictures   as images,
    unit_price as price,
    ccy        as currency
from read_parquet('{{ var("raw_dir") }}/raw_supplier_offers.parquet')
