//! Records to one Parquet file. Columns:
//!
//! | column | type |
//! |---|---|
//! | `partition` | int32 |
//! | `offset` | int64 |
//! | `timestamp` | timestamp (ms, UTC) |
//! | `timestamp_type` | string: `CreateTime` or `LogAppendTime` |
//! | `key`, `value` | binary, null when absent |
//! | `headers` | list of struct {key: string, value: binary} |
//! | `producer_id`, `producer_epoch` | int64, int16; null for non-idempotent producers |
//! | `value_parsed` | struct of the declared value schema's fields (only with a schema) |
//! | `value_valid` | boolean: the value decoded into `value_parsed` (only with a schema) |
//!
//! Row groups of at most 65 536 rows with min/max statistics, so offset and time predicates
//! skip row groups and files. Snappy compression.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Int16Builder, Int32Builder, Int64Builder, ListBuilder,
    StringBuilder, StructBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{new_null_array, Array, ArrayRef, RecordBatch, StructArray};
use arrow_buffer::NullBuffer;
use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};
use bytes::Bytes;
use kafka_protocol::records::{Record, TimestampType};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::schema::ValueSchema;
use crate::ArchiveError;

/// Rows per row group.
pub const ROW_GROUP_ROWS: usize = 65_536;

/// A built file.
#[derive(Debug)]
pub struct Built {
    /// The Parquet bytes.
    pub parquet: Bytes,
    /// Rows written.
    pub rows: usize,
    /// Non-null values that did not match the declared schema (kept raw, flagged).
    pub invalid: usize,
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

fn headers_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(header_fields()),
        true,
    )))
}

/// The file schema for a topic (with or without a declared value schema).
pub fn schema(value: Option<&ValueSchema>) -> Arc<Schema> {
    let mut fields = vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("timestamp_type", DataType::Utf8, false),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("headers", headers_type(), false),
        Field::new("producer_id", DataType::Int64, true),
        Field::new("producer_epoch", DataType::Int16, true),
    ];
    if let Some(v) = value {
        fields.push(Field::new(
            "value_parsed",
            DataType::Struct(v.schema.fields().clone()),
            true,
        ));
        fields.push(Field::new("value_valid", DataType::Boolean, false));
    }
    Arc::new(Schema::new(fields))
}

/// Builds the Parquet file of `records` (all of `partition`).
pub fn build(
    partition: i32,
    records: &[Record],
    value: Option<&ValueSchema>,
) -> Result<Built, ArchiveError> {
    let n = records.len();
    let mut part = Int32Builder::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);
    let mut ts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut ts_type = StringBuilder::new();
    let mut key = BinaryBuilder::new();
    let mut val = BinaryBuilder::new();
    let mut headers = ListBuilder::new(StructBuilder::new(
        header_fields(),
        vec![
            Box::new(StringBuilder::new()),
            Box::new(BinaryBuilder::new()),
        ],
    ))
    .with_field(Arc::new(Field::new(
        "item",
        DataType::Struct(header_fields()),
        true,
    )));
    let mut pid = Int64Builder::with_capacity(n);
    let mut pepoch = Int16Builder::with_capacity(n);
    for r in records {
        part.append_value(partition);
        offset.append_value(r.offset);
        ts.append_value(r.timestamp);
        ts_type.append_value(match r.timestamp_type {
            TimestampType::Creation => "CreateTime",
            TimestampType::LogAppend => "LogAppendTime",
        });
        key.append_option(r.key.as_deref());
        val.append_option(r.value.as_deref());
        let sb = headers.values();
        for (k, v) in &r.headers {
            sb.field_builder::<StringBuilder>(0)
                .expect("header key builder")
                .append_value(k.as_str());
            sb.field_builder::<BinaryBuilder>(1)
                .expect("header value builder")
                .append_option(v.as_deref());
            sb.append(true);
        }
        headers.append(true);
        if r.producer_id >= 0 {
            pid.append_value(r.producer_id);
            pepoch.append_value(r.producer_epoch);
        } else {
            pid.append_null();
            pepoch.append_null();
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(part.finish()),
        Arc::new(offset.finish()),
        Arc::new(ts.finish()),
        Arc::new(ts_type.finish()),
        Arc::new(key.finish()),
        Arc::new(val.finish()),
        Arc::new(headers.finish()),
        Arc::new(pid.finish()),
        Arc::new(pepoch.finish()),
    ];
    let mut invalid = 0;
    if let Some(v) = value {
        let (parsed, valid, bad) = parse_values(records, v)?;
        invalid = bad;
        columns.push(Arc::new(parsed));
        columns.push(Arc::new(valid));
    }
    let schema = schema(value);
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| ArchiveError::Parquet(e.to_string()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by("silt".into())
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, schema, Some(props))
        .map_err(|e| ArchiveError::Parquet(e.to_string()))?;
    w.write(&batch)
        .map_err(|e| ArchiveError::Parquet(e.to_string()))?;
    w.close()
        .map_err(|e| ArchiveError::Parquet(e.to_string()))?;
    Ok(Built {
        parquet: Bytes::from(out),
        rows: n,
        invalid,
    })
}

/// Decodes each value with the declared schema; a value that does not decode (or is absent)
/// gets a null struct and `valid = false`.
fn parse_values(
    records: &[Record],
    v: &ValueSchema,
) -> Result<(StructArray, arrow_array::BooleanArray, usize), ArchiveError> {
    let fields = v.schema.fields();
    let mut per_field: Vec<Vec<ArrayRef>> = vec![Vec::with_capacity(records.len()); fields.len()];
    let mut valid = BooleanBuilder::with_capacity(records.len());
    let mut invalid = 0;
    for r in records {
        let row = r.value.as_deref().and_then(|bytes| one_row(bytes, v));
        match row {
            Some(batch) => {
                for (i, col) in batch.columns().iter().enumerate() {
                    per_field[i].push(col.clone());
                }
                valid.append_value(true);
            }
            None => {
                if r.value.is_some() {
                    invalid += 1;
                }
                for (i, f) in fields.iter().enumerate() {
                    per_field[i].push(new_null_array(f.data_type(), 1));
                }
                valid.append_value(false);
            }
        }
    }
    let valid = valid.finish();
    let children: Vec<ArrayRef> = per_field
        .iter()
        .zip(fields.iter())
        .map(|(arrays, f)| {
            if arrays.is_empty() {
                return Ok(new_null_array(f.data_type(), 0));
            }
            let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
            arrow_select::concat::concat(&refs).map_err(|e| ArchiveError::Parquet(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let nulls = NullBuffer::from(valid.values().clone());
    let parsed = StructArray::try_new(fields.clone(), children, Some(nulls))
        .map_err(|e| ArchiveError::Parquet(e.to_string()))?;
    Ok((parsed, valid, invalid))
}

/// Exactly one JSON object that fits the schema, as a one-row batch.
fn one_row(bytes: &[u8], v: &ValueSchema) -> Option<RecordBatch> {
    let mut d = arrow_json::ReaderBuilder::new(v.schema.clone())
        .with_strict_mode(true)
        .build_decoder()
        .ok()?;
    let used = d.decode(bytes).ok()?;
    if used != bytes.len() {
        return None;
    }
    let batch = d.flush().ok()??;
    (batch.num_rows() == 1).then_some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use bytes::Bytes;
    use kafka_protocol::protocol::StrBytes;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn rec(offset: i64, value: Option<&str>) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: if offset % 2 == 0 { 5 } else { -1 },
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: 0,
            timestamp: 1_700_000_000_000 + offset,
            key: Some(Bytes::from(format!("k{offset}"))),
            value: value.map(|v| Bytes::from(v.to_string())),
            headers: [(
                StrBytes::from_static_str("h"),
                Some(Bytes::from_static(b"x")),
            )]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn parquet_round_trips_and_bad_values_are_flagged() {
        let schema = ValueSchema::parse(
            r#"{"fields":[{"name":"id","type":"int64"},{"name":"name","type":"string"}]}"#,
        )
        .unwrap();
        let records = vec![
            rec(0, Some(r#"{"id": 1, "name": "a"}"#)),
            rec(1, Some("not json")),
            rec(2, None),
            rec(3, Some(r#"{"id": "x"}"#)),
            rec(4, Some(r#"{"id": 4}"#)),
        ];
        let built = build(3, &records, Some(&schema)).unwrap();
        assert_eq!((built.rows, built.invalid), (5, 2));
        let mut reader = ParquetRecordBatchReaderBuilder::try_new(built.parquet)
            .unwrap()
            .build()
            .unwrap();
        let b = reader.next().unwrap().unwrap();
        assert_eq!(b.num_rows(), 5);
        let offsets = b
            .column_by_name("offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(offsets.values().to_vec(), vec![0, 1, 2, 3, 4]);
        let valid = b.column_by_name("value_valid").unwrap().as_boolean();
        assert_eq!(
            (0..5).map(|i| valid.value(i)).collect::<Vec<_>>(),
            vec![true, false, false, false, true]
        );
        let parsed = b.column_by_name("value_parsed").unwrap().as_struct();
        let ids = parsed.column(0).as_primitive::<Int64Type>();
        assert_eq!((ids.value(0), ids.value(4)), (1, 4));
        assert!(parsed.is_null(1) && parsed.is_null(3));
        let pids = b.column_by_name("producer_id").unwrap();
        assert!(pids.is_null(1) && !pids.is_null(0));
        assert!(b.column_by_name("value").unwrap().is_null(2));
    }
}
