//! Multi-frame ultrasound DICOM (US Multi-frame Image Storage, as in MIMIC-IV-ECHO) read with
//! dicom-rs, pure Rust. Feature `dicom`.
//!
//! Supported: MONOCHROME2, MONOCHROME1 (inverted), RGB (interleaved or planar), YBR_FULL, and
//! YBR_FULL_422 / RGB inside JPEG baseline (dicom-rs decodes those to RGB); 8-bit samples, or
//! 16-bit monochrome scaled by its stored bits. Uncompressed, RLE and JPEG (baseline, extended,
//! lossless) transfer syntaxes. PALETTE COLOR and native YBR_FULL_422 are reported unsupported.

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::{PhotometricInterpretation, PixelDecoder, PlanarConfiguration};

use super::{Clip, ColorMode, VideoError, VideoInfo, VideoReader, convert_channels};

/// A DICOM file opened for frame access.
pub struct DicomReader {
    path: PathBuf,
    obj: DefaultDicomObject,
    info: VideoInfo,
}

impl std::fmt::Debug for DicomReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DicomReader")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn container(path: &Path, reason: impl std::fmt::Display) -> VideoError {
    VideoError::Container {
        path: path.to_path_buf(),
        format: "DICOM",
        reason: reason.to_string(),
    }
}

impl DicomReader {
    /// Opens the file and reads its header (rows, columns, frames, frame timing).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, VideoError> {
        let path = path.as_ref();
        let obj = dicom_object::open_file(path).map_err(|e| container(path, e))?;
        let int = |tag, name: &str| -> Result<Option<u32>, VideoError> {
            match obj.element_opt(tag).map_err(|e| container(path, e))? {
                Some(el) => el
                    .to_int::<u32>()
                    .map(Some)
                    .map_err(|e| container(path, format!("{name}: {e}"))),
                None => Ok(None),
            }
        };
        let rows = int(tags::ROWS, "Rows")?
            .ok_or_else(|| container(path, "no Rows (0028,0010): not an image"))?;
        let cols = int(tags::COLUMNS, "Columns")?
            .ok_or_else(|| container(path, "no Columns (0028,0011): not an image"))?;
        obj.element_opt(tags::PIXEL_DATA)
            .map_err(|e| container(path, e))?
            .ok_or_else(|| container(path, "no Pixel Data (7FE0,0010)"))?;
        let frames = int(tags::NUMBER_OF_FRAMES, "NumberOfFrames")?
            .unwrap_or(1)
            .max(1);
        let float = |tag| -> Option<f64> {
            obj.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_float64().ok())
        };
        // frame rate: Frame Time (ms) > Cine Rate > Recommended Display Frame Rate
        let fps = float(tags::FRAME_TIME)
            .filter(|&ms| ms > 0.0)
            .map(|ms| 1000.0 / ms)
            .or_else(|| float(tags::CINE_RATE).filter(|&r| r > 0.0))
            .or_else(|| float(tags::RECOMMENDED_DISPLAY_FRAME_RATE).filter(|&r| r > 0.0));
        let ts = obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string();
        let codec = match ts.as_str() {
            "1.2.840.10008.1.2.4.50" => "dicom-jpeg-baseline".to_string(),
            "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.2" => {
                "dicom-native".to_string()
            }
            "1.2.840.10008.1.2.5" => "dicom-rle".to_string(),
            other => format!("dicom ({other})"),
        };
        let info = VideoInfo {
            path: path.to_path_buf(),
            frame_count: frames as usize,
            fps,
            width: cols as usize,
            height: rows as usize,
            codec,
            container: "dicom".into(),
            profile: None,
        };
        Ok(Self {
            path: path.to_path_buf(),
            obj,
            info,
        })
    }

    /// Decodes one frame to interleaved 8-bit pixels; returns `(pixels, channels)`.
    fn decode(&self, frame: usize) -> Result<(Vec<u8>, usize), VideoError> {
        let err = |reason: String| VideoError::Frame {
            path: self.path.clone(),
            frame,
            reason,
        };
        let px = self
            .obj
            .decode_pixel_data_frame(frame as u32)
            .map_err(|e| err(e.to_string()))?;
        let (w, h) = (self.info.width, self.info.height);
        let n = w * h;
        let spp = px.samples_per_pixel() as usize;
        let bits = px.bits_allocated();
        let data = px.data();
        let pi = px.photometric_interpretation().clone();
        let unsupported = |what: String| VideoError::Unsupported {
            path: self.path.clone(),
            what,
        };
        match (spp, bits) {
            (1, 8) => {
                let d = data
                    .get(..n)
                    .ok_or_else(|| err(format!("{} bytes of pixel data, need {n}", data.len())))?;
                let mut v = d.to_vec();
                if pi == PhotometricInterpretation::Monochrome1 {
                    v.iter_mut().for_each(|p| *p = 255 - *p);
                } else if !pi.is_monochrome() {
                    return Err(unsupported(format!(
                        "photometric interpretation {pi} with one sample per pixel"
                    )));
                }
                Ok((v, 1))
            }
            (1, 16) => {
                let d = data.get(..2 * n).ok_or_else(|| {
                    err(format!(
                        "{} bytes of pixel data, need {}",
                        data.len(),
                        2 * n
                    ))
                })?;
                let stored = px.bits_stored().clamp(1, 16) as u32;
                let max = ((1u32 << stored) - 1) as f32;
                let mut v: Vec<u8> = d
                    .chunks_exact(2)
                    .map(|b| {
                        ((u16::from_le_bytes([b[0], b[1]]) as u32).min(max as u32) as f32 * 255.0
                            / max)
                            .round() as u8
                    })
                    .collect();
                if pi == PhotometricInterpretation::Monochrome1 {
                    v.iter_mut().for_each(|p| *p = 255 - *p);
                }
                Ok((v, 1))
            }
            (3, 8) => {
                let d = data.get(..3 * n).ok_or_else(|| {
                    err(format!(
                        "{} bytes of pixel data, need {}",
                        data.len(),
                        3 * n
                    ))
                })?;
                let mut rgb = if px.planar_configuration() == PlanarConfiguration::PixelFirst {
                    (0..n)
                        .flat_map(|i| [d[i], d[n + i], d[2 * n + i]])
                        .collect::<Vec<u8>>()
                } else {
                    d.to_vec()
                };
                match pi {
                    PhotometricInterpretation::Rgb => {}
                    PhotometricInterpretation::YbrFull => {
                        for p in rgb.chunks_exact_mut(3) {
                            let (y, cb, cr) =
                                (p[0] as f32, p[1] as f32 - 128.0, p[2] as f32 - 128.0);
                            p[0] = (y + 1.402 * cr).round().clamp(0.0, 255.0) as u8;
                            p[1] = (y - 0.344_136 * cb - 0.714_136 * cr)
                                .round()
                                .clamp(0.0, 255.0) as u8;
                            p[2] = (y + 1.772 * cb).round().clamp(0.0, 255.0) as u8;
                        }
                    }
                    other => {
                        return Err(unsupported(format!(
                            "photometric interpretation {other} in uncompressed data"
                        )));
                    }
                }
                Ok((rgb, 3))
            }
            (s, b) => Err(unsupported(format!(
                "{s} samples per pixel with {b} bits allocated"
            ))),
        }
    }
}

impl VideoReader for DicomReader {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn read_frames(&mut self, indices: &[usize], color: ColorMode) -> Result<Clip, VideoError> {
        let wanted = super::distinct_indices(&self.path, indices, self.info.frame_count)?;
        let mut frames = std::collections::HashMap::new();
        for &i in &wanted {
            let (px, ch) = self.decode(i)?;
            frames.insert(i, convert_channels(&px, ch, color));
        }
        super::gather(
            &self.path,
            indices,
            self.info.height,
            self.info.width,
            color.channels(),
            |i| frames.get(&i).map(|v| v.as_slice()),
        )
    }
}

/// Writes a multi-frame US DICOM file (test fixtures and examples). `photometric` is
/// `MONOCHROME2` (1 channel), `RGB` or `YBR_FULL` (3 channels, stored as given); with `jpeg`
/// the frames are JPEG-baseline encoded by the caller and passed in `jpeg_frames`.
pub mod write {
    use super::*;
    use dicom_core::value::PixelFragmentSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    /// Pixel payload of [`us_multiframe`].
    pub enum Pixels<'a> {
        /// Uncompressed 8-bit samples, frames concatenated.
        Native(&'a [u8]),
        /// One JPEG baseline bitstream per frame.
        Jpeg(Vec<Vec<u8>>),
    }

    /// Writes a US Multi-frame Image Storage object.
    #[allow(clippy::too_many_arguments)]
    pub fn us_multiframe(
        path: &Path,
        rows: u16,
        cols: u16,
        frames: u32,
        samples_per_pixel: u16,
        photometric: &str,
        frame_time_ms: f64,
        pixels: Pixels<'_>,
    ) -> Result<(), VideoError> {
        let sop_class = "1.2.840.10008.5.1.4.1.1.3.1";
        let sop_instance = "2.25.1234567890123456789";
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(sop_class),
        ));
        obj.put(DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop_instance),
        ));
        obj.put(DataElement::new(
            tags::MODALITY,
            VR::CS,
            PrimitiveValue::from("US"),
        ));
        obj.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::from("PHANTOM^SYNTHETIC"),
        ));
        obj.put(DataElement::new(
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            PrimitiveValue::from(samples_per_pixel),
        ));
        obj.put(DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from(photometric),
        ));
        if samples_per_pixel == 3 {
            obj.put(DataElement::new(
                tags::PLANAR_CONFIGURATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ));
        }
        obj.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from(frames.to_string()),
        ));
        obj.put(DataElement::new(
            tags::FRAME_TIME,
            VR::DS,
            PrimitiveValue::from(format!("{frame_time_ms}")),
        ));
        obj.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(rows),
        ));
        obj.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(cols),
        ));
        obj.put(DataElement::new(
            tags::BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(8u16),
        ));
        obj.put(DataElement::new(
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(8u16),
        ));
        obj.put(DataElement::new(
            tags::HIGH_BIT,
            VR::US,
            PrimitiveValue::from(7u16),
        ));
        obj.put(DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ));
        let ts = match pixels {
            Pixels::Native(data) => {
                obj.put(DataElement::new(
                    tags::PIXEL_DATA,
                    VR::OB,
                    PrimitiveValue::from(data.to_vec()),
                ));
                "1.2.840.10008.1.2.1"
            }
            Pixels::Jpeg(frames) => {
                obj.put(DataElement::new(
                    tags::PIXEL_DATA,
                    VR::OB,
                    PixelFragmentSequence::new(Vec::<u32>::new(), frames),
                ));
                "1.2.840.10008.1.2.4.50"
            }
        };
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(ts)
                    .media_storage_sop_class_uid(sop_class)
                    .media_storage_sop_instance_uid(sop_instance),
            )
            .map_err(|e| VideoError::Encode {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        file.write_to_file(path).map_err(|e| VideoError::Encode {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}
