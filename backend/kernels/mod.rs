pub mod quant;
