//! The part of the ONNX format (`onnx.proto`, IR version 8) that our exports need (the BERT
//! encoder, the decoders with a key/value cache), as prost messages, and a small builder for
//! graphs of standard operators and ONNX Runtime's `com.microsoft` ones, with external data for weights over protobuf's 2 GB.
//!
//! Field numbers follow `onnx/onnx.proto`. Only the fields written here are declared: protobuf
//! readers ignore what they do not know, and ONNX Runtime reads exactly these.

use prost::Message;

/// `TensorProto.DataType.FLOAT`.
pub const FLOAT: i32 = 1;
/// `TensorProto.DataType.UINT8`.
pub const UINT8: i32 = 2;
/// `TensorProto.DataType.INT8`.
pub const INT8: i32 = 3;
/// `TensorProto.DataType.INT32`.
pub const INT32: i32 = 6;
/// `TensorProto.DataType.INT64`.
pub const INT64: i32 = 7;
/// `TensorProto.DataType.BOOL`.
pub const BOOL: i32 = 9;

/// A whole model.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    /// IR version of the format.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// Operator sets the graph uses.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// Who wrote it.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// Version of the producer.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// Free text.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// The computation.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Key-value metadata.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// An operator set and its version.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    /// Empty for the default ONNX domain.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// Opset version.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// A metadata entry.
#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A graph: nodes in topological order, weights, inputs and outputs.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    /// Nodes, topologically sorted.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Graph name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors (weights).
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Graph inputs.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Graph outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// One operator application.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    /// Input value names.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Output value names.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Node name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Operator.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// Operator domain; empty for ONNX.
    #[prost(string, tag = "7")]
    pub domain: String,
    /// Attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

/// A named attribute of a node.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `AttributeType`: 1 float, 2 int, 7 ints.
    #[prost(int32, tag = "20")]
    pub r#type: i32,
    /// Float value.
    #[prost(float, tag = "2")]
    pub f: f32,
    /// Int value.
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// Int list value.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

/// A tensor: initializer data, little-endian in `raw_data`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// Shape.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// Element type (`FLOAT`, `INT64`).
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// Value name.
    #[prost(string, tag = "8")]
    pub name: String,
    /// Raw little-endian data.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    /// Where the data lives when it is not in `raw_data`: `location`, `offset`, `length`.
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// 0: in this message; 1: in an external file.
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

/// Name and type of a graph input or output.
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    /// Value name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// A value type; only tensors here (field 1 of the `value` oneof).
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    /// Tensor type.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

/// `TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    /// Element type.
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    /// Shape, with symbolic dimensions.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// A tensor shape.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    /// Dimensions.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// One dimension: a number or a symbolic name (the `value` oneof).
#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    /// A fixed size.
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    /// A symbolic size, e.g. `batch`.
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// Builds a graph node by node, naming values uniquely.
#[derive(Default)]
pub struct GraphBuilder {
    /// The graph so far.
    pub graph: GraphProto,
    counter: usize,
    external: Option<ExternalData>,
    /// Whether a node of ONNX Runtime's `com.microsoft` domain was added (the model must then
    /// import that operator set).
    uses_microsoft: bool,
}

/// ONNX Runtime's own operator domain (fused transformer operators, quantized MatMul).
pub const MICROSOFT_DOMAIN: &str = "com.microsoft";

/// Weights written to a file beside the model as they are added, so that a graph over 2 GB (the
/// protobuf limit) can be written, and without holding the weights twice in memory.
struct ExternalData {
    file: std::io::BufWriter<std::fs::File>,
    /// The file's name, relative to the model's folder.
    location: String,
    offset: u64,
    /// The first write that failed, reported when the model is finished.
    failed: Option<std::io::Error>,
}

impl ExternalData {
    /// Move `tensor`'s data to the end of the file (aligned) and point the tensor at it.
    fn append(&mut self, tensor: &mut TensorProto) -> std::io::Result<()> {
        use std::io::Write;
        if self.failed.is_some() {
            return Ok(());
        }
        let padding = self.offset.next_multiple_of(EXTERNAL_ALIGNMENT) - self.offset;
        self.file.write_all(&vec![0u8; padding as usize])?;
        self.offset += padding;
        let data = std::mem::take(&mut tensor.raw_data);
        self.file.write_all(&data)?;
        let entry = |key: &str, value: String| StringStringEntryProto {
            key: key.into(),
            value,
        };
        tensor.external_data = vec![
            entry("location", self.location.clone()),
            entry("offset", self.offset.to_string()),
            entry("length", data.len().to_string()),
        ];
        tensor.data_location = 1;
        self.offset += data.len() as u64;
        Ok(())
    }
}

/// Tensors smaller than this stay inside the model file, as ONNX's own converter does.
const EXTERNAL_THRESHOLD: usize = 1024;
/// Offsets of external tensors are aligned so that ONNX Runtime can map them.
const EXTERNAL_ALIGNMENT: u64 = 4096;

/// A dimension of a declared input or output.
pub enum Dim {
    /// Fixed.
    Fixed(i64),
    /// Symbolic.
    Named(&'static str),
}

impl GraphBuilder {
    /// A builder that writes every initializer of 1 KB or more into `path` (the model's external
    /// data file, named in the model relative to its folder).
    pub fn with_external_data(path: &std::path::Path) -> std::io::Result<Self> {
        let location = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| std::io::Error::other("the external data file needs a UTF-8 name"))?
            .to_string();
        Ok(Self {
            external: Some(ExternalData {
                file: std::io::BufWriter::new(std::fs::File::create(path)?),
                location,
                offset: 0,
                failed: None,
            }),
            ..Self::default()
        })
    }

    /// Declare a graph input.
    pub fn input(&mut self, name: &str, elem_type: i32, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, elem_type, dims));
        name.to_string()
    }

    /// Declare a graph output produced by `value` under `name`.
    pub fn output(&mut self, value: &str, name: &str, elem_type: i32, dims: &[Dim]) {
        self.node_named("Identity", &[value], vec![], name);
        self.graph.output.push(value_info(name, elem_type, dims));
    }

    /// Add a float initializer.
    pub fn f32s(&mut self, name: &str, dims: &[i64], data: &[f32]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, FLOAT, raw)
    }

    /// Add an int64 initializer.
    pub fn i64s(&mut self, name: &str, dims: &[i64], data: &[i64]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, INT64, raw)
    }

    /// Add a uint8 initializer (quantized weights).
    pub fn u8s(&mut self, name: &str, dims: &[i64], data: &[u8]) -> String {
        self.initializer(name, dims, UINT8, data.to_vec())
    }

    /// Add an int8 initializer (quantized weights).
    pub fn i8s(&mut self, name: &str, dims: &[i64], data: &[i8]) -> String {
        let raw = data.iter().map(|v| v.to_le_bytes()[0]).collect();
        self.initializer(name, dims, INT8, raw)
    }

    /// Add a float constant under a generated name.
    pub fn constant_f32(&mut self, dims: &[i64], data: &[f32]) -> String {
        self.counter += 1;
        let name = format!("const_f32_{}", self.counter);
        self.f32s(&name, dims, data)
    }

    /// Add an int64 constant under a generated name.
    pub fn constant_i64(&mut self, dims: &[i64], data: &[i64]) -> String {
        self.counter += 1;
        let name = format!("const_i64_{}", self.counter);
        self.i64s(&name, dims, data)
    }

    fn initializer(
        &mut self,
        name: &str,
        dims: &[i64],
        data_type: i32,
        raw_data: Vec<u8>,
    ) -> String {
        let mut tensor = TensorProto {
            dims: dims.to_vec(),
            data_type,
            name: name.to_string(),
            raw_data,
            ..Default::default()
        };
        if let Some(external) = &mut self.external {
            if tensor.raw_data.len() >= EXTERNAL_THRESHOLD {
                if let Err(e) = external.append(&mut tensor) {
                    // Reported by `finish_external`, which must not write a model whose data is
                    // incomplete.
                    external.failed.get_or_insert(e);
                }
            }
        }
        self.graph.initializer.push(tensor);
        name.to_string()
    }

    /// Add a node with `outputs` outputs (e.g. `Split`); returns their generated names.
    pub fn node_outputs(
        &mut self,
        op: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
        outputs: usize,
    ) -> Vec<String> {
        self.node_outputs_in("", op, inputs, attribute, outputs)
    }

    /// Add a node of ONNX Runtime's `com.microsoft` domain with one output (an empty input name
    /// skips an optional input); returns the output's generated name.
    pub fn microsoft_node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        let mut outputs = self.microsoft_node_outputs(op, inputs, attributes, 1);
        outputs.remove(0)
    }

    /// Add a node of ONNX Runtime's `com.microsoft` domain with `outputs` outputs; returns their
    /// generated names.
    pub fn microsoft_node_outputs(
        &mut self,
        op: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
        outputs: usize,
    ) -> Vec<String> {
        self.uses_microsoft = true;
        self.node_outputs_in(MICROSOFT_DOMAIN, op, inputs, attribute, outputs)
    }

    fn node_outputs_in(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
        outputs: usize,
    ) -> Vec<String> {
        self.counter += 1;
        let names: Vec<String> = (0..outputs.max(1))
            .map(|i| format!("{}_{}_{i}", op.to_ascii_lowercase(), self.counter))
            .collect();
        self.push(domain, op, inputs, attribute, names.clone());
        names
    }

    /// Add a node whose one output is the graph output `name` (no copy through `Identity`);
    /// returns `name`, to be used as a value too.
    pub fn node_as_output(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        name: &str,
        elem_type: i32,
        dims: &[Dim],
    ) -> String {
        self.node_named(op, inputs, attributes, name);
        self.graph.output.push(value_info(name, elem_type, dims));
        name.to_string()
    }

    /// Add a node with one output; returns the output's generated name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        self.counter += 1;
        let output = format!("{}_{}", op.to_ascii_lowercase(), self.counter);
        self.node_named(op, inputs, attributes, &output);
        output
    }

    fn node_named(
        &mut self,
        op: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
        output: &str,
    ) {
        self.push("", op, inputs, attribute, vec![output.to_string()]);
    }

    fn push(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
        output: Vec<String>,
    ) {
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output,
            name: format!("node_{}", self.graph.node.len()),
            op_type: op.to_string(),
            domain: domain.to_string(),
            attribute,
        });
    }

    /// Like [`finish`](Self::finish), for a builder made by
    /// [`with_external_data`](Self::with_external_data): flushes the data file first, and fails
    /// if any write to it failed.
    pub fn finish_external(
        mut self,
        opset: i64,
        doc: &str,
        metadata: &[(&str, String)],
    ) -> std::io::Result<Vec<u8>> {
        if let Some(mut external) = self.external.take() {
            use std::io::Write;
            if let Some(e) = external.failed.take() {
                return Err(e);
            }
            external.file.flush()?;
            external.file.get_ref().sync_all()?;
        }
        Ok(self.finish(opset, doc, metadata))
    }

    /// A whole model around the graph, for opset `opset`.
    pub fn finish(self, opset: i64, doc: &str, metadata: &[(&str, String)]) -> Vec<u8> {
        let mut opset_import = vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }];
        if self.uses_microsoft {
            opset_import.push(OperatorSetIdProto {
                domain: MICROSOFT_DOMAIN.into(),
                version: 1,
            });
        }
        ModelProto {
            ir_version: 8,
            opset_import,
            producer_name: "twin".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.into(),
            graph: Some(self.graph),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: k.to_string(),
                    value: v.clone(),
                })
                .collect(),
        }
        .encode_to_vec()
    }
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Dim::Fixed(n) => Dimension {
                                dim_value: Some(*n),
                                dim_param: None,
                            },
                            Dim::Named(s) => Dimension {
                                dim_value: None,
                                dim_param: Some(s.to_string()),
                            },
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

/// An int attribute.
pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 2,
        i: value,
        ..Default::default()
    }
}

/// A float attribute.
pub fn attr_float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 1,
        f: value,
        ..Default::default()
    }
}

/// An int-list attribute.
pub fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: values.to_vec(),
        ..Default::default()
    }
}
