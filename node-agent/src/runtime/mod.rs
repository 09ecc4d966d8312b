//! Inference runtimes behind one small trait. A [`Backend`] turns a verified file into a
//! [`Model`]; a model is immutable after loading and shared (`Arc`) by every request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use edgefleet_protocol::wire::Assignment;
use edgefleet_protocol::{Runtime, SelfTest};

use crate::tensor::{DataType, Tensor, element_count};

pub mod language;
#[cfg(feature = "onnxruntime")]
pub mod ort;
pub mod tract;

/// An input or output as the model declares it; `-1` marks a dimension fixed only at run time.
#[derive(Clone, Debug, PartialEq)]
pub struct IoSpec {
    pub name: String,
    pub dt: DataType,
    pub shape: Vec<i64>,
}

impl IoSpec {
    pub fn accepts_shape(&self, shape: &[usize]) -> bool {
        shape.len() == self.shape.len()
            && self
                .shape
                .iter()
                .zip(shape)
                .all(|(want, got)| *want < 0 || *want as u64 == *got as u64)
    }

    pub fn concrete_shape(&self) -> Option<Vec<usize>> {
        self.shape
            .iter()
            .map(|d| usize::try_from(*d).ok())
            .collect()
    }
}

pub trait Model: Send + Sync + 'static {
    fn inputs(&self) -> &[IoSpec];
    fn outputs(&self) -> &[IoSpec];
    /// Runs one inference; `inputs` are in the order of [`Model::inputs`], already checked
    /// against their specs.
    fn run(&self, inputs: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>>;
    /// The KServe metadata `platform`.
    fn platform(&self) -> &'static str {
        "onnx"
    }
    /// Language models answer the OpenAI-compatible routes instead of tensor requests.
    fn language_model(&self) -> Option<&dyn language::LanguageModel> {
        None
    }
    /// Warm-up and self-test before the model may serve; see [`prepare_tensors`].
    fn prepare(&self, test: Option<&SelfTest>) -> Result<(), String> {
        prepare_tensors(self, test)
    }
}

/// Concrete shapes to fix dynamic input dimensions with, by input name (from the self-test).
pub type ShapeHints = HashMap<String, Vec<usize>>;

pub trait Backend: Send + Sync + 'static {
    fn runtime(&self) -> Runtime;
    fn load(&self, path: &Path, hints: &ShapeHints) -> anyhow::Result<Arc<dyn Model>>;
    /// Loads the artifact of `assignment`; backends that take settings from the deployment
    /// (llama.cpp: context length and slots) override this.
    fn load_assigned(
        &self,
        path: &Path,
        assignment: &Assignment,
    ) -> anyhow::Result<Arc<dyn Model>> {
        self.load(path, &shape_hints(assignment.self_test.as_ref()))
    }
}

pub fn shape_hints(self_test: Option<&SelfTest>) -> ShapeHints {
    self_test
        .map(|t| {
            t.inputs
                .iter()
                .map(|i| {
                    let shape = i.shape.iter().map(|d| *d as usize).collect();
                    (i.name.clone(), shape)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Builds the self-test inputs: the spec's tensors by name, zeros for inputs it leaves out.
pub fn self_test_inputs<M: Model + ?Sized>(
    model: &M,
    test: Option<&SelfTest>,
) -> Result<Vec<Tensor>, String> {
    if let Some(unknown) = test
        .into_iter()
        .flat_map(|t| &t.inputs)
        .find(|i| !model.inputs().iter().any(|spec| spec.name == i.name))
    {
        let names: Vec<&str> = model.inputs().iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "self-test input {:?} is not an input of the model (it takes {names:?})",
            unknown.name
        ));
    }
    let mut out = Vec::new();
    for spec in model.inputs() {
        let given = test.and_then(|t| t.inputs.iter().find(|i| i.name == spec.name));
        let tensor = match given {
            Some(input) => {
                let shape: Vec<usize> = input.shape.iter().map(|d| *d as usize).collect();
                let n = element_count(&shape).ok_or("self-test shape overflows")?;
                let dt = DataType::from(input.datatype);
                let values = match (&input.data, input.fill) {
                    (Some(data), _) => data.clone(),
                    (None, fill) => {
                        let fill = fill.unwrap_or(0.0);
                        dt.check_f64(fill).map_err(|why| {
                            format!(
                                "self-test input {:?}: fill {fill} is not a valid {dt} ({why})",
                                spec.name
                            )
                        })?;
                        vec![fill; n]
                    }
                };
                Tensor::from_f64(dt, shape, &values)
                    .map_err(|e| format!("self-test input {:?}: {e}", spec.name))?
            }
            None => {
                let shape = spec.concrete_shape().ok_or_else(|| {
                    format!(
                        "input {:?} has dynamic shape {:?} and the self-test does not give one",
                        spec.name, spec.shape
                    )
                })?;
                zeros(spec.dt, shape)
            }
        };
        if tensor.dt != spec.dt || !spec.accepts_shape(&tensor.shape) {
            return Err(format!(
                "self-test input {:?} is {} {:?} but the model expects {} {:?}",
                spec.name, tensor.dt, tensor.shape, spec.dt, spec.shape
            ));
        }
        out.push(tensor);
    }
    Ok(out)
}

fn zeros(dt: DataType, shape: Vec<usize>) -> Tensor {
    let len = element_count(&shape).unwrap_or(0) * dt.size();
    Tensor {
        dt,
        shape,
        data: vec![0u8; len].into(),
    }
}

/// Warm-up and self-test before a model may serve: runs the self-test input twice and checks
/// every output is finite. Without a self-test, zeros of the declared shapes are used; a model
/// whose input shapes are only known at run time and that has no self-test cannot be warmed
/// up, which is logged and accepted.
pub fn prepare_tensors<M: Model + ?Sized>(
    model: &M,
    test: Option<&SelfTest>,
) -> Result<(), String> {
    if test.is_none()
        && let Some(spec) = model.inputs().iter().find(|s| s.concrete_shape().is_none())
    {
        tracing::warn!(
            input = %spec.name,
            shape = ?spec.shape,
            "no self-test and a dynamic input shape: skipping warm-up"
        );
        return Ok(());
    }
    let inputs = self_test_inputs(model, test)?;
    for round in 0..2 {
        let outputs = model
            .run(inputs.clone())
            .map_err(|e| format!("self-test inference failed: {e:#}"))?;
        if outputs.len() != model.outputs().len() {
            return Err(format!(
                "self-test produced {} outputs, the model declares {}",
                outputs.len(),
                model.outputs().len()
            ));
        }
        if let Some((spec, _)) = model
            .outputs()
            .iter()
            .zip(&outputs)
            .find(|(_, t)| !t.all_finite())
        {
            return Err(format!(
                "self-test output {:?} is not finite (round {round})",
                spec.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_protocol::{SelfTestInput, TensorDatatype};

    /// A transformer's token inputs; `run` is never called.
    struct TokenModel(Vec<IoSpec>);

    impl Model for TokenModel {
        fn inputs(&self) -> &[IoSpec] {
            &self.0
        }
        fn outputs(&self) -> &[IoSpec] {
            &[]
        }
        fn run(&self, _: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>> {
            anyhow::bail!("not a real model")
        }
    }

    fn token_model() -> TokenModel {
        let spec = |name: &str| IoSpec {
            name: name.into(),
            dt: DataType::Int64,
            shape: vec![-1, -1],
        };
        TokenModel(vec![spec("input_ids"), spec("attention_mask")])
    }

    fn input(name: &str, fill: Option<f64>, data: Option<Vec<f64>>) -> SelfTestInput {
        SelfTestInput {
            name: name.into(),
            shape: vec![1, 3],
            datatype: TensorDatatype::Int64,
            fill,
            data,
        }
    }

    #[test]
    fn integer_self_test_inputs_take_whole_f64_values() {
        let test = SelfTest {
            inputs: vec![
                input("input_ids", None, Some(vec![101.0, 7592.0, 102.0])),
                input("attention_mask", Some(1.0), None),
            ],
        };
        let tensors = self_test_inputs(&token_model(), Some(&test)).expect("token ids are valid");
        assert_eq!(tensors[0].to_json(), serde_json::json!([101, 7592, 102]));
        assert_eq!(tensors[1].to_json(), serde_json::json!([1, 1, 1]));
        assert_eq!(tensors[0].shape, vec![1, 3]);
    }

    #[test]
    fn unrepresentable_self_test_values_name_the_input_and_element() {
        let test = SelfTest {
            inputs: vec![
                input("input_ids", None, Some(vec![101.0, 1.5, 102.0])),
                input("attention_mask", Some(1.0), None),
            ],
        };
        let e = self_test_inputs(&token_model(), Some(&test)).expect_err("1.5 is no token id");
        assert_eq!(
            e,
            "self-test input \"input_ids\": element 1 is not a valid INT64: 1.5 \
             (INT64 takes whole numbers)"
        );
        let test = SelfTest {
            inputs: vec![
                input("input_ids", None, Some(vec![101.0, 7592.0, 102.0])),
                input("attention_mask", Some(0.5), None),
            ],
        };
        let e = self_test_inputs(&token_model(), Some(&test)).expect_err("0.5 fill");
        assert_eq!(
            e,
            "self-test input \"attention_mask\": fill 0.5 is not a valid INT64 \
             (INT64 takes whole numbers)"
        );
    }
}
