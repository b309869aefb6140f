//! Object detection with YOLO ONNX models through ONNX Runtime (docs/plans/video.md §4). The
//! runtime is a shared library opened from the path it is handed (the binary finds it; this
//! crate never reads the environment), and the model a file exported by Ultralytics or YOLOv5.
//! Pure parts apart, each tested without the runtime: the output [`layout`]s, [`letterbox`]ing,
//! [`nms`] and the class [`names`]; the [`http`] router serves a [`Detector`] to many clients.
//!
//! A model is refused at load, naming its file and the shape, unless it has one float input
//! `[B, 3, H, W]` and a float output in one of the three layouts; the batch dimension, when
//! dynamic, lets [`Detector::detect`] run up to `max_batch` images in one call.

pub mod client;
pub mod http;
pub mod layout;
pub mod letterbox;
pub mod names;
pub mod nms;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ort::environment::Environment;
use ort::session::Session;
use ort::value::{Outlet, TensorElementType, TensorRef, ValueType};
use thiserror::Error;

use crate::track::BoxF;
pub use layout::Layout;
use layout::{infer_format, OutputFormat};
use letterbox::Letterbox;

/// An image to look at: RGB24, rows top to bottom, no padding between rows.
#[derive(Debug, Clone, Copy)]
pub struct RgbImage<'a> {
    pub width: usize,
    pub height: usize,
    pub data: &'a [u8],
}

#[derive(Debug, Clone, PartialEq)]
pub struct DetectorOptions {
    /// The ONNX model file.
    pub model: PathBuf,
    /// ONNX Runtime's shared library (`libonnxruntime.so.1.31.1` or later). One process opens
    /// one: every detector of a process must name the same file.
    pub runtime: PathBuf,
    /// A file of class names, one per line in class order, overriding the model's own.
    pub labels: Option<PathBuf>,
    /// The output layout, when the shape alone cannot tell (see [`layout::infer_format`]).
    pub layout: Option<Layout>,
    /// Boxes scoring at or under this are dropped (Ultralytics' predict default, 0.25).
    pub conf: f32,
    /// Of two boxes of one class overlapping by more than this, the less confident is dropped.
    pub iou: f32,
    /// The most boxes kept per image.
    pub max_det: usize,
    /// The most images in one run of a model with a dynamic batch dimension.
    pub max_batch: usize,
    /// Threads one model run uses (ONNX Runtime's intra-op threads); 0 leaves it to ONNX
    /// Runtime (one per core). A detector sharing its cores with decoding, or pinned to fewer
    /// cores than the machine has, runs faster with fewer: threads waiting on a busy core
    /// spin.
    pub threads: usize,
    /// Run on the GPU through ONNX Runtime's CUDA execution provider (device 0 of those the
    /// process may see). Where the runtime library has no CUDA provider, or no GPU or driver
    /// is there, the model runs on the CPU and [`Detector::provider_note`] says why.
    pub cuda: bool,
}

impl DetectorOptions {
    /// Ultralytics' defaults: conf 0.25, iou 0.7, max_det 300; batches of up to 8.
    pub fn new(model: impl Into<PathBuf>, runtime: impl Into<PathBuf>) -> DetectorOptions {
        DetectorOptions {
            model: model.into(),
            runtime: runtime.into(),
            labels: None,
            layout: None,
            conf: 0.25,
            iou: 0.7,
            max_det: 300,
            max_batch: 8,
            threads: 0,
            cuda: false,
        }
    }
}

/// One object found on an image.
#[derive(Debug, Clone, PartialEq)]
pub struct Detected {
    pub class: usize,
    pub label: String,
    pub score: f32,
    /// On the image, in its pixels.
    pub bbox: BoxF,
}

#[derive(Debug, Error)]
pub enum DetectError {
    #[error("ONNX Runtime {}: {reason}", path.display())]
    Runtime { path: PathBuf, reason: String },
    #[error("model {}: {reason}", path.display())]
    Model { path: PathBuf, reason: String },
    #[error("model {}: names metadata {reason}", path.display())]
    Names { path: PathBuf, reason: String },
    #[error("{0}")]
    Labels(String),
    #[error("detector options: {0}")]
    Options(String),
    /// An image given to [`Detector::detect`], by its 0-based index.
    #[error("image {index}: {reason}")]
    Image { index: usize, reason: String },
    #[error("model {}: running it failed: {reason}", path.display())]
    Run { path: PathBuf, reason: String },
}

/// The one ONNX Runtime environment of this process and the library it was opened from: ort
/// loads one library per process and allows one environment, so a second path is refused
/// rather than silently ignored.
static RUNTIME: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

fn runtime(path: &Path) -> Result<Environment, DetectError> {
    let failed = |reason: String| DetectError::Runtime {
        path: path.to_path_buf(),
        reason,
    };
    let canonical = std::fs::canonicalize(path)
        .map_err(|error| failed(format!("cannot open the library: {error}")))?;
    let mut opened = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((loaded, environment)) = opened.as_ref() {
        if *loaded == canonical {
            return Ok(environment.clone());
        }
        return Err(failed(format!(
            "this process already runs ONNX Runtime from {}; it cannot open a second one",
            loaded.display()
        )));
    }
    let environment = ort::init_from(&canonical)
        .map_err(|error| failed(error.to_string()))?
        .with_name("flowers-detect")
        .build()
        .map_err(|error| failed(error.to_string()))?;
    *opened = Some((canonical, environment.clone()));
    Ok(environment)
}

/// A loaded model, ready to look at images. One run at a time (ONNX Runtime's sessions are not
/// safe to run concurrently); the [`http`] router queues requests for one.
pub struct Detector {
    session: Session,
    model: PathBuf,
    format: OutputFormat,
    names: Vec<String>,
    /// Width, height.
    input_size: (usize, usize),
    dynamic_batch: bool,
    conf: f32,
    iou: f32,
    max_det: usize,
    max_batch: usize,
    /// The input tensor, reused across runs.
    input: Vec<f32>,
    /// Model runs so far, for tests of batching.
    runs: u64,
    /// `CUDA` or `CPU`: where the model runs.
    provider: &'static str,
    /// Why the model runs on the CPU when CUDA was asked for.
    provider_note: Option<String>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("model", &self.model)
            .field("format", &self.format)
            .field("input_size", &self.input_size)
            .field("dynamic_batch", &self.dynamic_batch)
            .finish_non_exhaustive()
    }
}

/// The dimensions of a float32 tensor outlet (−1 where dynamic), or why it is not one.
fn float_tensor_shape(outlet: &Outlet, what: &str) -> Result<Vec<i64>, String> {
    match outlet.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } => Ok(shape.to_vec()),
        other => Err(format!(
            "{what} {} is {other}; a YOLO model's {what} is a float32 tensor",
            outlet.name()
        )),
    }
}

impl Detector {
    pub fn load(options: &DetectorOptions) -> Result<Detector, DetectError> {
        check_options(options)?;
        let environment = runtime(&options.runtime)?;
        let model = options.model.clone();
        let refused = |reason: String| DetectError::Model {
            path: model.clone(),
            reason,
        };
        if !model.is_file() {
            return Err(refused(match std::fs::metadata(&model) {
                Ok(_) => "is not a file".into(),
                Err(error) => format!("cannot read it: {error}"),
            }));
        }
        let threads = options.threads;
        let builder = || {
            Session::builder(&environment).and_then(|builder| {
                if threads == 0 {
                    return Ok(builder);
                }
                builder
                    .with_intra_threads(threads)
                    .map_err(ort::Error::from)
            })
        };
        let mut provider = "CPU";
        let mut provider_note = None;
        let mut cuda_builder = None;
        if options.cuda {
            let cuda = ort::ep::CUDA::default()
                .with_device_id(0)
                .build()
                .error_on_failure();
            match builder()
                .and_then(|b| b.with_execution_providers([cuda]).map_err(ort::Error::from))
            {
                Ok(b) => {
                    provider = "CUDA";
                    cuda_builder = Some(b);
                }
                Err(error) => {
                    provider_note = Some(format!(
                        "ONNX Runtime's CUDA execution provider cannot run here ({error}); the \
                         model runs on the CPU"
                    ))
                }
            }
        }
        let session = match cuda_builder {
            Some(b) => Ok(b),
            None => builder(),
        }
        .and_then(|mut builder| builder.commit_from_file(&model))
        .map_err(|error| refused(format!("ONNX Runtime cannot load it: {error}")))?;

        let [input] = session.inputs() else {
            return Err(refused(format!(
                "has {} inputs; a YOLO model has one, images [B, 3, H, W]",
                session.inputs().len()
            )));
        };
        let Some(output) = session.outputs().first() else {
            return Err(refused("has no outputs".into()));
        };
        let input_shape = float_tensor_shape(input, "input").map_err(refused)?;
        let input_refused = |why: &str| {
            refused(format!(
                "input {} has shape {input_shape:?}; {why}",
                input.name()
            ))
        };
        if input_shape.len() != 4 {
            return Err(input_refused("a YOLO model takes [B, 3, H, W]"));
        }
        if input_shape[1] != 3 {
            return Err(input_refused("a YOLO model takes 3 channels, [B, 3, H, W]"));
        }
        let side = |dim: i64| usize::try_from(dim).ok().filter(|&dim| dim > 0);
        let (Some(height), Some(width)) = (side(input_shape[2]), side(input_shape[3])) else {
            return Err(input_refused(
                "its height and width must be fixed (export with a fixed imgsz)",
            ));
        };
        let dynamic_batch = input_shape[0] < 0;
        if !dynamic_batch && input_shape[0] != 1 {
            return Err(input_refused(
                "a fixed batch must be 1 (or export it dynamic)",
            ));
        }
        let output_shape = float_tensor_shape(output, "output").map_err(refused)?;

        let metadata_names = session
            .metadata()
            .ok()
            .and_then(|metadata| metadata.custom("names"));
        let model_names = match metadata_names {
            Some(text) => Some(
                names::parse_names(&text).map_err(|error| DetectError::Names {
                    path: model.clone(),
                    reason: format!("{text:?}: {error}"),
                })?,
            ),
            None => None,
        };
        let labels = match &options.labels {
            Some(path) => Some(names::read_labels(path).map_err(DetectError::Labels)?),
            None => None,
        };
        let given = labels.as_ref().or(model_names.as_ref());
        let format = infer_format(
            &output_shape,
            given.map(Vec::len),
            options.layout,
            (width, height),
        )
        .map_err(|reason| {
            let source = match (&options.labels, &model_names) {
                (Some(path), _) => format!(" (classes from {})", path.display()),
                (None, Some(_)) => " (classes from its names metadata)".into(),
                (None, None) => String::new(),
            };
            refused(format!("output {}: {reason}{source}", output.name()))
        })?;
        let names = match (labels, model_names, format.classes) {
            (Some(names), _, _) | (None, Some(names), _) => names,
            (None, None, Some(count)) => names::numbered_names(count),
            // End-to-end with no names: labels are made per detection from the class number.
            (None, None, None) => Vec::new(),
        };
        Ok(Detector {
            session,
            model,
            format,
            names,
            input_size: (width, height),
            dynamic_batch,
            conf: options.conf,
            iou: options.iou,
            max_det: options.max_det,
            max_batch: if dynamic_batch { options.max_batch } else { 1 },
            input: Vec::new(),
            runs: 0,
            provider,
            provider_note,
        })
    }

    /// The class names, in class order.
    /// `CUDA` or `CPU`: where the model runs.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// Why the model runs on the CPU although CUDA was asked for.
    pub fn provider_note(&self) -> Option<&str> {
        self.provider_note.as_deref()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The model's input size: width, height.
    pub fn input_size(&self) -> (usize, usize) {
        self.input_size
    }

    pub fn dynamic_batch(&self) -> bool {
        self.dynamic_batch
    }

    /// The most images one model run takes: `max_batch` when the batch is dynamic, else 1.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    pub fn layout(&self) -> Layout {
        self.format.layout
    }

    /// What each image shows, most confident first, in the images' order. With a dynamic
    /// batch, up to `max_batch` images go in one model run; otherwise one at a time.
    pub fn detect(&mut self, images: &[RgbImage]) -> Result<Vec<Vec<Detected>>, DetectError> {
        for (index, image) in images.iter().enumerate() {
            check_image(image).map_err(|reason| DetectError::Image { index, reason })?;
        }
        let mut found = Vec::with_capacity(images.len());
        for batch in images.chunks(self.max_batch) {
            found.extend(self.run(batch)?);
        }
        Ok(found)
    }

    fn run(&mut self, images: &[RgbImage]) -> Result<Vec<Vec<Detected>>, DetectError> {
        let (width, height) = self.input_size;
        let per_image = 3 * width * height;
        self.input.resize(images.len() * per_image, 0.0);
        let letterboxes: Vec<Letterbox> = images
            .iter()
            .zip(self.input.chunks_exact_mut(per_image))
            .map(|(image, input)| {
                let letterbox = Letterbox::new(image.width, image.height, width, height);
                letterbox.fill(image.data, input);
                letterbox
            })
            .collect();
        let failed = |reason: String| DetectError::Run {
            path: self.model.clone(),
            reason,
        };
        let shape = [images.len(), 3, height, width];
        let tensor = TensorRef::from_array_view((shape, &self.input[..]))
            .map_err(|error| failed(error.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![tensor])
            .map_err(|error| failed(error.to_string()))?;
        self.runs += 1;
        let (output_shape, output) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|error| failed(error.to_string()))?;
        let dims: Vec<usize> = output_shape.iter().map(|&dim| dim as usize).collect();
        let [batch, rows, columns] = dims[..] else {
            return Err(failed(format!("output shape {output_shape} is not 3-D")));
        };
        let fits = infer_format(
            &[batch as i64, rows as i64, columns as i64],
            self.format.classes,
            Some(self.format.layout),
            self.input_size,
        );
        if batch != images.len() || fits.map(|format| format.classes) != Ok(self.format.classes) {
            return Err(failed(format!(
                "output shape {output_shape} for {} images does not match the {} layout it loaded with",
                images.len(),
                self.format.layout
            )));
        }
        let results = output
            .chunks_exact(rows * columns)
            .zip(&letterboxes)
            .map(|(output, letterbox)| {
                let mut candidates =
                    layout::decode(self.format.layout, output, rows, columns, self.conf);
                // Onto the image first, so that boxes with nothing on it (wholly in the padding)
                // take no place among the max_det kept.
                candidates.retain_mut(|candidate| {
                    candidate.bbox = letterbox.to_source(candidate.bbox);
                    candidate.bbox.x1 > candidate.bbox.x0 && candidate.bbox.y1 > candidate.bbox.y0
                });
                let kept = match self.format.layout {
                    // An end-to-end model did its NMS itself.
                    Layout::EndToEnd => {
                        nms::sort_by_score(&mut candidates);
                        candidates.truncate(self.max_det);
                        candidates
                    }
                    Layout::V5 | Layout::V8 => nms::nms(candidates, self.iou, self.max_det),
                };
                kept.into_iter()
                    .map(|candidate| Detected {
                        class: candidate.class,
                        label: label(&self.names, candidate.class),
                        score: candidate.score,
                        bbox: candidate.bbox,
                    })
                    .collect()
            })
            .collect();
        Ok(results)
    }
}

/// The name of `class`, or `class{n}` past the names (an end-to-end model that gives none).
fn label(names: &[String], class: usize) -> String {
    names
        .get(class)
        .cloned()
        .unwrap_or_else(|| format!("class{class}"))
}

fn check_options(options: &DetectorOptions) -> Result<(), DetectError> {
    let refuse = |reason: String| Err(DetectError::Options(reason));
    if !(0.0..1.0).contains(&options.conf) {
        return refuse(format!(
            "conf {} must be at least 0 and under 1",
            options.conf
        ));
    }
    if !(0.0..=1.0).contains(&options.iou) {
        return refuse(format!("iou {} must be between 0 and 1", options.iou));
    }
    if options.max_det == 0 {
        return refuse("max_det must be at least 1".into());
    }
    if options.max_batch == 0 {
        return refuse("max_batch must be at least 1".into());
    }
    Ok(())
}

/// Why an image cannot be looked at, if it cannot.
pub fn check_image(image: &RgbImage) -> Result<(), String> {
    if image.width == 0 || image.height == 0 {
        return Err(format!("size {}×{} is empty", image.width, image.height));
    }
    let expected = image
        .width
        .checked_mul(image.height)
        .and_then(|pixels| pixels.checked_mul(3));
    if expected != Some(image.data.len()) {
        return Err(format!(
            "{}×{} RGB24 is {} bytes, but {} were given",
            image.width,
            image.height,
            expected.map_or("too many".into(), |bytes| bytes.to_string()),
            image.data.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
