"""One module per dataset format. Each holds its adapter `pairs(dataset, **options)`, which turns the format's
records into pairs of the common schema and `Skip`s, the `COLUMNS` it needs, a `recognizes(record)` test where it
shares its columns with another format, and its own constants; `hf_smoe.data.FORMATS` registers them."""
